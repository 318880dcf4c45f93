"""What the DICOM readers and writers share (classic series, multi-frame images, SEG, SR): the LPS -> RAS
flip, the slice order rule, a series' name and kept attributes, the rescaled pixel type. Imports no other
DICOM module, so that each of them imports it and none imports another in a circle."""

from __future__ import annotations

import re

import numpy as np
import pydicom

from .errors import MedSegIOError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
KEEP_TAGS = (
    "Modality",
    "PatientID",
    "PatientName",
    "StudyDescription",
    "SeriesDescription",
    "SeriesNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Manufacturer",
    "BodyPartExamined",
    "StudyDate",
)
_STEP_RTOL = 0.01  # relative tolerance on slice steps before we call a series uneven
_STEP_ATOL = 0.01  # mm


def series_name(ds, fallback: str) -> str:
    parts = [str(ds.get("SeriesNumber", "") or ""), str(ds.get("SeriesDescription", "") or "")]
    name = "_".join(p for p in parts if p) or fallback
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-") or fallback


def metadata(ds, files) -> dict:
    meta = {"source_format": "dicom", "n_files": len(files), "files": [str(f) for f, _ in files]}
    for tag in KEEP_TAGS:
        if tag in ds and ds.get(tag) not in (None, ""):
            val = ds.get(tag)
            meta[tag] = val if isinstance(val, (int, float)) else str(val)
    meta["TransferSyntaxUID"] = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    for tag in ("WindowCenter", "WindowWidth"):
        if tag in ds:
            v = ds.get(tag)
            meta[tag] = float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)
    return meta


def output_dtype(raws: list[np.ndarray], rescales: list[tuple[float, float]]) -> np.dtype:
    """Smallest exact type for the rescaled values: int16/int32 when every slope is 1 and every
    intercept whole, float32 otherwise."""
    if all(sl == 1 and it.is_integer() for sl, it in rescales) and all(r.dtype.kind in "iu" for r in raws):
        lo = min(int(r.min()) + int(it) for r, (_, it) in zip(raws, rescales))
        hi = max(int(r.max()) + int(it) for r, (_, it) in zip(raws, rescales))
        for dt in (np.uint8, np.int16, np.uint16, np.int32):
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                if all(sl == 1 and it == 0 for sl, it in rescales) and all(r.dtype == raws[0].dtype for r in raws):
                    return raws[0].dtype  # nothing to rescale: keep the stored type
                return np.dtype(dt)
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def rescaled_into(out: np.ndarray, raw: np.ndarray, slope: float, inter: float) -> None:
    if out.dtype.kind == "f":
        np.multiply(raw, np.float32(slope), out=out, casting="unsafe")
        out += np.float32(inter)
    elif inter == 0:
        out[...] = raw
    else:  # exact integer arithmetic; the result is known to fit ``out``
        np.add(raw, int(inter), out=out, dtype=np.int64 if out.dtype == np.int64 else np.int32, casting="unsafe")


def slice_order(positions: np.ndarray, normal: np.ndarray, name: str, where, files=None) -> tuple[np.ndarray, float]:
    """The order of slices (or frames) by their ``positions`` (LPS, (n, 3)) projected on the slice
    ``normal``, and the slice step in mm. The one rule for classic series, multi-frame images and the
    DICOM SEG writer: slices sharing a position, or an uneven step (a missing slice), are an error naming
    the series."""
    proj = np.asarray(positions, dtype=np.float64) @ np.asarray(normal, dtype=np.float64)
    order = np.argsort(proj, kind="stable")
    proj = proj[order]
    steps = np.diff(proj)
    if not len(steps):
        return order, 0.0
    if np.any(np.abs(steps) < _STEP_ATOL):
        n_dup = int(np.sum(np.abs(steps) < _STEP_ATOL))
        raise MedSegIOError(
            where,
            f"series {name}: {n_dup} slice(s) share a position with another (several echoes or time points "
            "in one series, or a duplicated slice?); cannot build one volume",
        )
    step = float(np.median(steps))
    uneven = np.abs(steps - step) > _STEP_RTOL * step + _STEP_ATOL
    if np.any(uneven):
        k = int(np.argmax(uneven))
        missing = steps[k] / step - 1
        hint = f" (about {missing:.0f} missing slice(s))" if missing > 0.5 else ""
        at = files[order[k + 1]] if files is not None else where
        raise MedSegIOError(
            at,
            f"series {name}: uneven slice step, {steps[k]:.3f} mm between slices {k} and {k + 1} where the series "
            f"step is {step:.3f} mm{hint}",
        )
    return order, step
