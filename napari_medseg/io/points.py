"""Intervertebral disc points: CSV, JSON and single-voxel label NIfTI (Spinal Cord Toolbox convention).

Disc numbers follow SCT: disc ``n`` lies between vertebrae ``n-1`` and ``n`` with C1=1 ... C7=7,
T1=8 ... T12=19, L1=20 ... L5=24, S1=25. So 3 = C2/C3, 19 = T11/T12, 21 = L1/L2, 25 = L5/S1;
1 is the top of C1 (SCT's first label). World coordinates are RAS+ millimetres.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from .atomic import write_text_atomic
from .disc_points import Disc, DiscPoints, disc_name, disc_number  # noqa: F401 - names io.points has always given
from .errors import MedSegIOError
from .volume import Volume

CSV_COLUMNS = ("name", "sct_number", "confidence", "x_mm", "y_mm", "z_mm", "i", "j", "k", "flag")
JSON_FORMAT = "napari-medseg discs v1"


# ---------------------------------------------------------------- reading


def is_points_path(path: str | os.PathLike) -> bool:
    name = os.fspath(path).lower()
    return name.endswith(("_discs.csv", "_discs.json"))


def read_points(path: str | os.PathLike) -> DiscPoints:
    """Read ``*_discs.csv``, ``*_discs.json`` or a single-voxel ``*_labels-disc.nii.gz``."""
    path = Path(path)
    if not path.is_file():
        raise MedSegIOError(path, "file does not exist")
    low = path.name.lower()
    if low.endswith(".json"):
        return _read_json(path)
    if low.endswith(".csv"):
        return _read_csv(path)
    if low.endswith((".nii", ".nii.gz")):
        from .nifti import read_nifti

        return points_from_label_volume(read_nifti(path, kind="labels"))
    if is_sr_file(path):
        from .dicom_sr import read_sr

        return read_sr(path)
    raise MedSegIOError(path, "not a points file (expected .csv, .json, a disc-label NIfTI or a DICOM SR)")


def is_sr_file(path: str | os.PathLike) -> bool:
    """A DICOM structured report (by content), e.g. disc points written by ``label-discs --format dicom-sr``."""
    from .dicom import is_dicom_file

    if not is_dicom_file(path):
        return False
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("Modality", "")) == "SR"
    except Exception:  # noqa: BLE001 - not readable: not ours to claim
        return False


def _number_from(path, row) -> int:
    try:
        if row.get("sct_number") not in (None, ""):
            return int(float(row["sct_number"]))
        return disc_number(str(row.get("name", "")))
    except ValueError as err:
        raise MedSegIOError(path, str(err)) from err


def _read_csv(path: Path) -> DiscPoints:
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (UnicodeDecodeError, csv.Error) as err:
        raise MedSegIOError(path, f"not a readable CSV file ({err})") from err
    if not rows:
        return DiscPoints(source=str(path))
    cols = set(rows[0])
    if not ({"x_mm", "y_mm", "z_mm"} <= cols) or not ({"name"} & cols or {"sct_number"} & cols):
        raise MedSegIOError(path, f"missing columns: need name or sct_number and x_mm, y_mm, z_mm (found {sorted(cols)})")
    discs = []
    for n, row in enumerate(rows, start=2):
        try:
            world = tuple(float(row[c]) for c in ("x_mm", "y_mm", "z_mm"))
            conf = float(row.get("confidence") or 1.0)
            vox = tuple(float(row[c]) for c in "ijk") if all(row.get(c) not in (None, "") for c in "ijk") else None
        except ValueError as err:
            raise MedSegIOError(path, f"line {n}: {err}") from err
        discs.append(Disc(_number_from(path, row), world, conf, vox, str(row.get("flag") or "")))
    return DiscPoints(discs, source=str(path))


def _read_json(path: Path) -> DiscPoints:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MedSegIOError(path, f"not a readable JSON file ({err})") from err
    if not isinstance(obj, dict) or not isinstance(obj.get("discs"), list):
        raise MedSegIOError(path, "JSON has no 'discs' list")
    discs = []
    for d in obj["discs"]:
        try:
            world = tuple(float(v) for v in d["world_mm"])
            vox = tuple(float(v) for v in d["voxel"]) if d.get("voxel") is not None else None
            discs.append(Disc(_number_from(path, d), world, float(d.get("confidence", 1.0)), vox,
                              str(d.get("flag") or "")))
        except (KeyError, TypeError, ValueError) as err:
            raise MedSegIOError(path, f"bad disc entry {d!r} ({err})") from err
    affine = np.asarray(obj["affine"], dtype=np.float64) if obj.get("affine") is not None else None
    shape = tuple(obj["shape"]) if obj.get("shape") is not None else None
    levels = obj.get("levels")
    return DiscPoints(discs, affine, shape, obj.get("source"), "" if levels in (None, "ok") else str(levels),
                      str(obj.get("count") or ""))


def points_from_label_volume(vol: Volume) -> DiscPoints:
    """Single-voxel disc labels -> points (several voxels of one value give their centroid)."""
    data = np.asarray(vol.data)
    if data.ndim != 3:
        raise MedSegIOError(vol.path, f"disc labels must be a 3-D volume, got shape {data.shape}")
    nz = np.argwhere(data > 0)
    values = data[tuple(nz.T)].astype(int)
    numbers = sorted(set(values.tolist()))
    voxels = [nz[values == n].mean(axis=0) for n in numbers]
    try:
        [disc_name(n) for n in numbers]
    except ValueError as err:
        raise MedSegIOError(vol.path, str(err)) from err
    return DiscPoints.from_voxels(voxels, numbers, vol.affine, data.shape, source=vol.path)


# ---------------------------------------------------------------- writing


def _voxels_for(points: DiscPoints) -> list:
    if points.affine is not None:
        return [tuple(v) for v in points.voxels()]
    return [d.voxel for d in points.discs]


def write_points_csv(path: str | os.PathLike, points: DiscPoints) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for d, vox in zip(points.discs, _voxels_for(points)):
        vox = ("", "", "") if vox is None else tuple(f"{v:.4f}" for v in vox)
        w.writerow([d.name, d.number, f"{d.confidence:.4f}", *(f"{c:.4f}" for c in d.world), *vox, d.flag])
    return write_text_atomic(path, buf.getvalue())


def write_points_json(path: str | os.PathLike, points: DiscPoints) -> Path:
    obj = {
        "format": JSON_FORMAT,
        "coordinate_system": "RAS+ mm (world); voxel = index in the source volume",
        "source": points.source,
        "affine": None if points.affine is None else np.asarray(points.affine).tolist(),
        "shape": None if points.shape is None else list(points.shape),
        "verdict": points.verdict if points.discs else None,
        "levels": (points.levels or "ok") if points.discs else None,
        "count": points.count,
        "discs": [
            {
                "name": d.name,
                "sct_number": d.number,
                "confidence": d.confidence,
                "world_mm": list(d.world),
                "voxel": None if vox is None else [float(v) for v in vox],
                "flag": d.flag,
            }
            for d, vox in zip(points.discs, _voxels_for(points))
        ],
    }
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_disc_label_nifti(path: str | os.PathLike, points: DiscPoints, reference: Volume | None = None) -> Path:
    """One voxel per disc valued with its SCT number, on the reference's grid (or the points' own geometry)."""
    from .nifti import write_nifti

    path = Path(path)
    affine = reference.affine if reference is not None else points.affine
    shape = tuple(reference.data.shape[:3]) if reference is not None else points.shape
    if affine is None or shape is None:
        raise MedSegIOError(path, "a disc-label volume needs the source geometry (affine and shape)")
    inv = np.linalg.inv(affine)
    out = np.zeros(shape, dtype=np.uint8)
    for d in points.discs:
        vox = np.rint((inv @ np.r_[d.world, 1.0])[:3]).astype(int)
        if np.any(vox < 0) or np.any(vox >= np.asarray(shape)):
            raise MedSegIOError(path, f"disc {d.name} at voxel {tuple(vox)} lies outside the volume of shape {shape}")
        if out[tuple(vox)]:
            raise MedSegIOError(path, f"disc {d.name} falls on the same voxel {tuple(vox)} as disc {disc_name(out[tuple(vox)])}")
        out[tuple(vox)] = d.number
    if reference is not None:
        return write_nifti(path, out, reference=reference, kind="labels")
    return write_nifti(path, out, affine, kind="labels")


def write_points(path: str | os.PathLike, points: DiscPoints, reference: Volume | None = None,
                 algorithm: dict | None = None) -> Path:
    """Write by extension: ``.csv``, ``.json``, ``.nii(.gz)`` (single-voxel labels) or ``.dcm`` (a DICOM SR
    referencing ``reference``, which must be the DICOM series the points lie on)."""
    low = os.fspath(path).lower()
    if low.endswith(".dcm"):
        if reference is None:
            raise MedSegIOError(path, "a DICOM SR must reference the DICOM series the discs lie on; none was given "
                                      "(save as .csv, .json or .nii.gz instead)")
        from .dicom_sr import write_sr

        return write_sr(path, points, reference, algorithm=algorithm)
    if low.endswith(".csv"):
        return write_points_csv(path, points)
    if low.endswith(".json"):
        return write_points_json(path, points)
    if low.endswith((".nii", ".nii.gz")):
        return write_disc_label_nifti(path, points, reference)
    raise MedSegIOError(path, "points are written as .csv, .json, .nii.gz or .dcm (DICOM SR)")
