"""Refuse allocations that cannot fit, before making them."""

from __future__ import annotations

import os

from .errors import MedSegIOError

ENV_MAX_BYTES = "NAPARI_MEDSEG_MAX_BYTES"


def default_max_bytes() -> int:
    """``$NAPARI_MEDSEG_MAX_BYTES`` if set, else 90 % of the memory available right now."""
    env = os.environ.get(ENV_MAX_BYTES)
    if env:
        return int(float(env))
    try:
        import psutil

        return int(psutil.virtual_memory().available * 0.9)
    except Exception:  # psutil missing or unsupported platform
        return 64 * 1024**3


def check_allocation(path, nbytes: int, what: str, max_bytes: int | None = None) -> None:
    limit = default_max_bytes() if max_bytes is None else int(max_bytes)
    if nbytes > limit:
        raise MedSegIOError(
            path,
            f"{what} needs {nbytes / 1024**3:.1f} GiB, more than the {limit / 1024**3:.1f} GiB available; "
            "refusing to allocate",
        )
