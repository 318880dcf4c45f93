"""What a model expects of its input, recorded from its own training data, and the check run before
inference (our choice of rules; the papers give none).

Training records an :func:`input_profile` of every training case and stores their summary
(:func:`summarise`) as ``expects`` in the checkpoint config (the model card). Before a model runs on a new
input, :func:`check` compares the input's profile with it and returns the reasons it does not fit:

* image kind: a 2-D model refuses volumes and the reverse; RGB vs grey;
* intensity kind of volumes: CT (Hounsfield units: the darkest 0.5 % at or below -500) vs not CT (MRI, and
  any other volume without Hounsfield units);
  a DICOM ``Modality`` tag, when both sides have one, must agree;
* field of view of volumes in the plane the network sees (the two patient axes other than the slice axis;
  for disc labeling the sagittal plane): the physical extent along each must lie within half the smallest
  and twice the largest extent seen in training (a lumbar spine scan spans 220-380 mm head to feet, a
  cardiac MRI 150-260 mm across). The number of slices is not checked: slice-wise networks do not care.

A refused input gets a one-line reason that says how to run anyway (``--force`` / ``force=True`` / the
widget's checkbox). Checkpoints trained before this existed record nothing and are not checked.
"""

from __future__ import annotations

import numpy as np

from .. import io
from ..io.errors import InvalidInput

AXES = ("R-L", "A-P", "S-I")
EXTENT_FACTOR = 2.0
CT_FLOOR = -500.0


class InputMismatch(InvalidInput):
    """The input is not the kind of image the model was trained on."""


def input_profile(vol: io.Volume, slice_axis: int | None = None) -> dict:
    """Image kind, intensity kind and field of view of one image or volume (cheap: a strided sample).
    ``slice_axis`` (file order) is recorded as the patient axis it runs along (``slice_ras``)."""
    if vol.is_2d:
        return {"dims": 2, "rgb": bool(vol.rgb), "dtype": str(np.asarray(vol.data).dtype)}
    data = np.asarray(vol.data)
    if data.ndim == 4:
        data = data[..., 0]
    sample = data[:: max(1, data.shape[0] // 32), :: max(1, data.shape[1] // 64), :: max(1, data.shape[2] // 64)]
    sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample.ravel()
    lo, hi = (np.percentile(sample, [0.5, 99.5]) if sample.size else (0.0, 0.0))
    # extent along each RAS axis: voxel axes' physical lengths projected onto patient axes
    lin = np.abs(np.asarray(vol.affine)[:3, :3])
    extent = lin @ np.asarray(data.shape[:3], dtype=float)
    prof = {"dims": 3, "rgb": False, "p005": float(lo), "p995": float(hi), "extent_mm": extent.round(1).tolist(),
            "ct": bool(lo <= CT_FLOOR)}
    if slice_axis is not None:
        prof["slice_ras"] = int(np.argmax(lin[:, slice_axis]))
    modality = vol.metadata.get("Modality")
    if isinstance(modality, str) and modality:
        prof["modality"] = modality
    return prof


def summarise(profiles: list[dict]) -> dict:
    """The ``expects`` record of a model from the profiles of its training cases. The field of view is
    checked along the patient axes other than the (most common) slice axis of the training volumes."""
    if not profiles:
        return {}
    dims = sorted({p["dims"] for p in profiles})
    out: dict = {"dims": dims[0] if len(dims) == 1 else dims, "rgb": sorted({p["rgb"] for p in profiles})}
    three = [p for p in profiles if p["dims"] == 3]
    if three:
        ext = np.array([p["extent_mm"] for p in three])
        out["extent_mm"] = {"min": ext.min(0).round(1).tolist(), "max": ext.max(0).round(1).tolist()}
        slices = [p["slice_ras"] for p in three if "slice_ras" in p]
        through = int(np.bincount(slices).argmax()) if slices else None
        out["checked_axes"] = [AXES[i] for i in range(3) if i != through]
        out["ct"] = sorted({p["ct"] for p in three})
        mods = sorted({p["modality"] for p in three if "modality" in p})
        if mods:
            out["modality"] = mods
    out["cases"] = len(profiles)
    return out


def describe(expects: dict) -> str:
    """One line for model cards and messages: what the model was trained on."""
    if not expects:
        return "not recorded"
    dims = expects.get("dims")
    if dims == 2:
        kind = "2-D " + ("RGB" if expects.get("rgb") == [True] else "grey" if expects.get("rgb") == [False] else
                         "RGB or grey") + " images"
    else:
        ct = expects.get("ct")
        kind = "3-D " + ("CT" if ct == [True] else "MRI (not CT)" if ct == [False] else "CT or MRI") + " volumes"
        ext = expects.get("extent_mm")
        if ext:
            kind += " of " + ", ".join(f"{a} {lo:.0f}-{hi:.0f} mm" for a, lo, hi in zip(AXES, ext["min"], ext["max"])
                                       if a in expects.get("checked_axes", AXES))
    return kind


def check(profile: dict, expects: dict | None) -> list[str]:
    """Reasons why an input with ``profile`` does not fit a model that ``expects`` (empty: it fits)."""
    if not expects:
        return []
    reasons = []
    want_dims = expects.get("dims")
    if isinstance(want_dims, int) and profile["dims"] != want_dims:
        have = "a 3-D volume" if profile["dims"] == 3 else "a 2-D image"
        reasons.append(f"the model was trained on {describe(expects)}; this is {have}")
        return reasons
    if profile["dims"] == 2:
        rgbs = expects.get("rgb") or []
        if len(rgbs) == 1 and profile["rgb"] != rgbs[0]:
            reasons.append(f"the model was trained on {'RGB' if rgbs[0] else 'grey'} images; this one is "
                           f"{'RGB' if profile['rgb'] else 'grey'}")
        return reasons
    cts = expects.get("ct") or []
    if len(cts) == 1 and profile["ct"] != cts[0]:
        what = "CT (Hounsfield units)" if profile["ct"] else "not CT (no intensities at or below -500)"
        reasons.append(f"the model was trained on {'CT' if cts[0] else 'MRI (not CT)'} volumes; this volume is "
                       f"{what}")
    mods = expects.get("modality") or []
    if mods and "modality" in profile and profile["modality"] not in mods:
        reasons.append(f"the model was trained on {'/'.join(mods)}; this series is {profile['modality']}")
    ext = expects.get("extent_mm")
    if ext:
        for axis, have, lo, hi in zip(AXES, profile["extent_mm"], ext["min"], ext["max"]):
            if axis not in expects.get("checked_axes", AXES):
                continue
            if have < lo / EXTENT_FACTOR or have > hi * EXTENT_FACTOR:
                reasons.append(f"its field of view along {axis} is {have:.0f} mm; the training volumes spanned "
                               f"{lo:.0f}-{hi:.0f} mm")
    return reasons


def refusal(name: str, reasons: list[str]) -> InputMismatch:
    return InputMismatch(f"{name}: refused, not what this model was trained for: {'; '.join(reasons)} "
                         "(run anyway with --force / force=True / 'run on any input')")
