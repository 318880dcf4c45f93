"""Input checks every network runs first, so bad input fails with a clear message, not deep in torch."""

from __future__ import annotations

import torch
from ..io.errors import InvalidInput


def check_input(x: torch.Tensor, *, name: str, in_channels: int, multiple: int, ndims=(4,)) -> None:
    """Dimensionality, channel count, spatial size (a multiple of ``multiple``) and finiteness."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        layout = {4: "(B, C, H, W)", 5: "(B, 3, C, H, W) for 2.5D"}
        raise InvalidInput(
            f"{name}: expected {want} input {' / '.join(layout[d] for d in ndims)}, got shape {tuple(x.shape)}"
        )
    channels = x.shape[-3]
    if channels != in_channels:
        raise InvalidInput(f"{name}: expected {in_channels} input channel(s), got {channels} (shape {tuple(x.shape)})")
    h, w = x.shape[-2:]
    bad = [s for s in (h, w) if s % multiple or s < multiple]
    if bad:
        near = tuple(max(multiple, int(round(s / multiple)) * multiple) for s in (h, w))
        raise InvalidInput(
            f"{name}: spatial size {h}x{w} must be a multiple of {multiple}; the nearest valid size is "
            f"{near[0]}x{near[1]} (pad or resize the input)"
        )
    if not _tracing() and not bool(torch.isfinite(x).all()):
        raise InvalidInput(f"{name}: input contains NaN or Inf values")


def _tracing() -> bool:
    """True under torch.jit.trace, torch.compile and torch.export (no data-dependent checks there)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is None:
        return False
    return bool(compiler.is_compiling() or (hasattr(compiler, "is_exporting") and compiler.is_exporting()))
