"""Deciding whether an array is a label map (by file name and by values)."""

from __future__ import annotations

import re

import numpy as np

_LABEL_NAME = re.compile(
    r"(^|[_\-.])(seg|dseg|segmentation|label|labels|labelmap|mask|masks|labels-disc|totalseg-output|seg-manual)"
    r"([_\-.]|$)",
    re.IGNORECASE,
)
MAX_LABEL_VALUES = 256


def looks_like_labels_name(name: str) -> bool:
    """``ct_seg``, ``case1_label``, ``x_labels-disc``, ``y_mask``, ``z_seg-manual`` ... are label names."""
    return bool(_LABEL_NAME.search(name))


def looks_like_labels_values(data: np.ndarray, strict: bool = True) -> bool:
    """Whole, non-negative values with few distinct levels.

    ``strict`` (used when the name says nothing) also requires an integer dtype and at most 64
    distinct values including a zero background; otherwise up to 256 whole values are accepted.
    """
    if data.size == 0 or data.dtype.kind not in "biuf":
        return False
    if strict and data.dtype.kind not in "biu":
        return False
    flat = data.reshape(-1)
    sample = flat if flat.size <= 2_000_000 else flat[:: max(1, flat.size // 2_000_000)]
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(sample)) or not np.array_equal(sample, np.round(sample)):
            return False
    if sample.min() < 0:
        return False
    values = np.unique(sample)
    limit = 64 if strict else MAX_LABEL_VALUES
    if len(values) > limit:
        return False
    if strict and values[0] != 0:
        return False
    return True
