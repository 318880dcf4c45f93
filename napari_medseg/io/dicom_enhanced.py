"""Single-file multi-frame DICOM images (Enhanced CT/MR, legacy-converted enhanced, DICOM SEG frames):
geometry from the Shared and Per-Frame Functional Groups.

Per frame: ImagePositionPatient (Plane Position), ImageOrientationPatient (Plane Orientation), PixelSpacing
(Pixel Measures), rescale (Pixel Value Transformation) and StackID / TemporalPositionIndex (Frame Content),
each looked up in the frame's own functional group first, then in the shared one (PS3.3 C.7.6.16). Frames
are grouped into stacks (same stack, time point and orientation), each stack ordered along its normal by
the same rule as a classic series (:func:`napari_medseg.io.dicom.slice_order`), and become one
:class:`Volume` each with the affine a classic series of the same slices would have.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MedSegIOError, MedSegIOWarning
from .limits import check_allocation
from .volume import Volume

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def is_multiframe(ds) -> bool:
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


@dataclass
class Frame:
    index: int  # frame number - 1
    position: np.ndarray  # LPS mm of the first pixel
    row_cos: np.ndarray
    col_cos: np.ndarray
    spacing: np.ndarray  # (between rows, between columns)
    slope: float
    intercept: float
    stack: str
    time: str
    frame_type: str  # e.g. ORIGINAL\PRIMARY\M\NONE vs ...\P: magnitude and phase frames are different images
    segment: int | None  # DICOM SEG: the segment this frame belongs to


def _item(ds, k: int, name: str):
    """Functional group ``name`` of frame ``k``: the per-frame one, else the shared one, else None."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    for seq in ((per[k] if per is not None and k < len(per) else None), (shared[0] if shared else None)):
        if seq is not None and name in seq and seq.get(name):
            return seq.get(name)[0]
    return None


FRAME_TYPE_GROUPS = ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence", "PETFrameTypeSequence",
                     "XAXRFFrameCharacteristicsSequence")


def frames(f, ds) -> list[Frame]:
    """Geometry of every frame of a multi-frame dataset; a one-line error naming what is missing."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    out = []
    for k in range(n):
        pos = _item(ds, k, "PlanePositionSequence")
        ori = _item(ds, k, "PlaneOrientationSequence")
        pm = _item(ds, k, "PixelMeasuresSequence")
        if pos is None or ori is None or "ImagePositionPatient" not in pos or "ImageOrientationPatient" not in ori:
            raise MedSegIOError(f, f"multi-frame image: frame {k + 1} has no plane position/orientation in its "
                                   "functional groups; cannot place it in space")
        iop = np.asarray(ori.ImageOrientationPatient, dtype=np.float64)
        spacing = np.asarray(pm.PixelSpacing if pm is not None and "PixelSpacing" in pm else
                             ds.get("PixelSpacing", [1.0, 1.0]), dtype=np.float64)
        pvt = _item(ds, k, "PixelValueTransformationSequence")
        slope = float((pvt.get("RescaleSlope") if pvt is not None else None) or ds.get("RescaleSlope", 1) or 1)
        inter = float((pvt.get("RescaleIntercept") if pvt is not None else None) or ds.get("RescaleIntercept", 0) or 0)
        fc = _item(ds, k, "FrameContentSequence")
        seg = _item(ds, k, "SegmentIdentificationSequence")
        ftype = next((_item(ds, k, kw) for kw in FRAME_TYPE_GROUPS if _item(ds, k, kw) is not None), None)
        out.append(Frame(k, np.asarray(pos.ImagePositionPatient, dtype=np.float64), iop[:3], iop[3:], spacing, slope,
                         inter, str(fc.get("StackID", "") if fc is not None else ""),
                         str(fc.get("TemporalPositionIndex", "") if fc is not None else ""),
                         "\\".join(str(v) for v in (ftype.get("FrameType") or [])) if ftype is not None else "",
                         int(seg.ReferencedSegmentNumber) if seg is not None else None))
    return out


def stacks(frame_list: list[Frame]) -> dict[tuple, list[Frame]]:
    """Frames grouped by (stack, time point, frame type, orientation), in a stable order (largest group
    first), as a classic series is split by image type, time point and orientation."""
    groups: dict[tuple, list[Frame]] = {}
    for fr in frame_list:
        key = (fr.stack, fr.time, fr.frame_type, tuple(np.round(np.r_[fr.row_cos, fr.col_cos] / 1e-4).astype(int)))
        groups.setdefault(key, []).append(fr)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0]))))


def grid_affine(first: Frame, positions: np.ndarray) -> np.ndarray:
    """RAS affine of (i = column, j = row, k = slice) for frames ordered along their normal, as a classic
    series of the same slices gets (``io/dicom.py``)."""
    from .dicom_common import LPS_TO_RAS

    lps = np.eye(4)
    lps[:3, 0] = first.row_cos * first.spacing[1]
    lps[:3, 1] = first.col_cos * first.spacing[0]
    if len(positions) > 1:
        lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        lps[:3, 2] = np.cross(first.row_cos, first.col_cos)
    lps[:3, 3] = positions[0]
    return LPS_TO_RAS @ lps


def pixel_frames(f, ds) -> np.ndarray:
    """All stored frames, (frames, rows, cols); a one-line error when they cannot be decoded."""
    try:
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises many types for undecodable data
        ts = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
        raise MedSegIOError(f, f"cannot decode pixel data (transfer syntax {ts}; {err.__class__.__name__}: "
                               f"{str(err).splitlines()[0]})") from err
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        raise MedSegIOError(f, "colour (multi-sample) DICOM images are not supported as volumes")
    return arr.reshape(-1, int(ds.Rows), int(ds.Columns))


def read_multiframe(f: Path, ds, max_bytes=None) -> list[Volume]:
    """One :class:`Volume` per stack of a multi-frame image (a DICOM SEG goes to ``io.dicom_seg``)."""
    from .dicom_common import metadata, output_dtype, rescaled_into, series_name, slice_order

    frame_list = frames(f, ds)
    groups = stacks(frame_list)
    name = series_name(ds, Path(f).name)
    rows, cols = int(ds.Rows), int(ds.Columns)
    check_allocation(f, rows * cols * len(frame_list) * 4, f"{name}: {len(frame_list)} frames of {rows}x{cols}", max_bytes)
    pixels = pixel_frames(f, ds)
    if len(groups) > 1:
        warnings.warn(f"{f}: {len(frame_list)} frames in {len(groups)} stacks or time points; opened as "
                      f"{len(groups)} volumes", MedSegIOWarning, stacklevel=3)
    volumes = []
    for n, (key, members) in enumerate(groups.items()):
        first = members[0]
        normal = np.cross(first.row_cos, first.col_cos)
        positions = np.array([fr.position for fr in members])
        order, step = slice_order(positions, normal, name, f)
        members = [members[i] for i in order]
        positions = positions[order]
        raws = [pixels[fr.index] for fr in members]
        rescales = [(fr.slope, fr.intercept) for fr in members]
        stack = np.empty((len(members), rows, cols), output_dtype(raws, rescales))
        for k, (raw, (slope, inter)) in enumerate(zip(raws, rescales)):
            rescaled_into(stack[k], raw, slope, inter)
        meta = metadata(ds, [(f, ds)])
        meta.update({"layout": "3d", "slice_step_mm": step, "multiframe": True,
                     "frames": [fr.index for fr in members], "SOPClassUID": str(ds.get("SOPClassUID", ""))})
        vol_name = name if len(groups) == 1 else f"{name}_{_suffix(key, n)}"
        volumes.append(Volume(data=stack.transpose(2, 1, 0), affine=grid_affine(first, positions), name=vol_name,
                              kind="image", path=str(f), metadata=meta))
    return volumes


def _suffix(key: tuple, n: int) -> str:
    stack, time, ftype, _ = key
    if ftype and not time and not stack:
        return ftype.split("\\")[-2] if ftype.count("\\") >= 2 else f"part{n + 1}"
    if time:
        return f"t{time}" + (f"_stack{stack}" if stack else "")
    return f"stack{stack}" if stack else f"part{n + 1}"
