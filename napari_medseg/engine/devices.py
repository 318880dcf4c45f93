"""Device and mixed-precision choice: auto/cpu/cuda/mps, bf16 or fp16 autocast where it pays."""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from dataclasses import dataclass

import torch

from ..io.errors import InvalidInput
from .choices import DEVICES, PRECISIONS


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else Apple MPS, else CPU. Asking for a missing device is an error."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise InvalidInput(f"unknown device {name!r}; choose from {DEVICES}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput("device 'cuda' was asked for but no CUDA GPU is available (try --device auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidInput("device 'mps' was asked for but Apple MPS is not available (try --device auto)")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX (where bf16 matmuls/convs run faster than fp32)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    try:
        return torch.backends.cpu.get_cpu_capability() == "AVX512" and "amx" in flags
    except (AttributeError, RuntimeError):  # older torch without the query
        return False


class PrecisionWarning(UserWarning):
    """A precision was asked for that this hardware runs slowly."""


@functools.lru_cache(maxsize=1)
def cpu_bf16_slowdown() -> float:
    """How many times slower a bf16-autocast 3x3 convolution (32 channels, 2 x 64 x 64, no grad) runs than
    the same in fp32 on this CPU: median of 5 after a warm-up, measured once per process (~0.1 s)."""
    conv = torch.nn.Conv2d(32, 32, 3, padding=1).eval()
    x = torch.randn(2, 32, 64, 64)

    def median_time(ctx) -> float:
        times = []
        with torch.no_grad():
            for i in range(6):
                with ctx():
                    t = time.perf_counter()
                    conv(x)
                    if i:
                        times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    fp32 = median_time(contextlib.nullcontext)
    bf16 = median_time(lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    return bf16 / max(fp32, 1e-9)


_warned_bf16 = False


def warn_slow_cpu_bf16() -> None:
    """Warn once per process that bf16 was asked for on a CPU without bf16 instructions, with the slowdown
    measured here (:func:`cpu_bf16_slowdown`); ``auto`` never chooses bf16 on such a CPU."""
    global _warned_bf16
    if _warned_bf16:
        return
    _warned_bf16 = True
    ratio = cpu_bf16_slowdown()
    warnings.warn(f"bf16 was asked for on a CPU without bf16 instructions (AVX512-BF16 / AMX): autocast is "
                  f"emulated here, {ratio:.1f}x the time of fp32 for a convolution measured just now; "
                  "--precision auto (fp32 on this CPU) is faster", PrecisionWarning, stacklevel=3)


@dataclass(frozen=True)
class Precision:
    """What autocast to use: ``dtype`` None means full fp32. ``scaler`` only for CUDA fp16."""

    device_type: str
    dtype: torch.dtype | None
    scaler: bool = False

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self):
        return torch.amp.GradScaler(self.device_type, enabled=self.scaler)


def select_precision(device: torch.device, mode: str = "auto", network: str | None = None) -> Precision:
    """``mode``: ``auto`` (bf16 on CUDA GPUs that support it, else fp16 with grad scaling; bf16 on CPUs
    with AVX512-BF16/AMX; fp32 elsewhere), ``fp32``, ``bf16`` or ``fp16``.

    ``network``: a registry name. In ``auto`` mode a network whose reduced-precision gradient does not
    agree with fp64 (``ModelInfo.bf16_training`` False, engine/fidelity.py) trains in fp32 on every device; asking for bf16 or fp16
    explicitly is still honoured."""
    if mode not in PRECISIONS:
        raise InvalidInput(f"unknown precision {mode!r}; choose auto, fp32, bf16 or fp16")
    kind = device.type
    if mode == "fp32" or (mode == "auto" and network is not None and not reduced_precision_ok(network)):
        return Precision(kind, None)
    if kind == "cuda":
        if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
            return Precision(kind, torch.float16, scaler=True)
        return Precision(kind, torch.bfloat16)
    if kind == "cpu":
        if mode == "fp16":
            raise InvalidInput("fp16 autocast is not supported for training on CPU; use bf16 or fp32")
        if mode == "bf16" and not cpu_has_fast_bf16():
            warn_slow_cpu_bf16()
        if mode == "bf16" or cpu_has_fast_bf16():
            return Precision(kind, torch.bfloat16)
        return Precision(kind, None)
    if kind == "mps":
        return Precision(kind, torch.float16) if mode == "fp16" else Precision(kind, None)
    return Precision(kind, None)


def reduced_precision_ok(network: str) -> bool:
    """The per-network policy (``models.REGISTRY[network].bf16_training``); unknown names: True."""
    from .. import models

    info = models.REGISTRY.get(network)
    return True if info is None else info.bf16_training


def release_memory() -> None:
    """Give cached accelerator memory back after a GUI job (the caching allocators keep it otherwise)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        mps.empty_cache()
