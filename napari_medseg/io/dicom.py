"""DICOM series reading (pydicom; JPEG 2000, JPEG-LS and lossless JPEG decoded by imagecodecs).

Compressed slices are decoded by imagecodecs (OpenJPEG, CharLS, lossless JPEG), which releases the GIL, so
the reader's thread pool decodes slices in parallel; pydicom's own decoder plugins (pylibjpeg) hold the GIL
and stay the fallback for every other case (several frames or samples, a codestream whose sign or size
disagrees with the header). Both give the same stored values (tests/test_dicom_codecs.py).

One :class:`Volume` per series (grouped by SeriesInstanceUID, and split further when a series mixes
orientations or image sizes). Slices are ordered by ImagePositionPatient projected on the slice
normal; rescale slope/intercept (modality LUT) is applied; the affine maps ``(i, j, k)`` = (column,
row, slice) to RAS+ millimetres, the convention NIfTI and dicom2nifti use.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels.utils import pixel_dtype

from .dicom_common import LPS_TO_RAS, metadata, output_dtype, rescaled_into, series_name, slice_order
from .errors import MedSegIOError, MedSegIOWarning
from .limits import check_allocation
from .volume import Volume, same_placement

_ORIENT_TOL = 1e-4


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for files with the ``DICM`` preamble, and for ``.dcm`` files pydicom can parse without one."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if p.suffix.lower() in (".dcm", ".ima", ".dicom") and len(head) > 0:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            return "SOPClassUID" in ds or "Rows" in ds
        except Exception:
            return False
    return False


def find_dicom_files(folder: str | os.PathLike) -> list[Path]:
    """All DICOM files below ``folder`` (recursively), in a stable order."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            if not f.startswith(".") and is_dicom_file(p):
                out.append(p)
    return out


def folder_has_dicom(folder: str | os.PathLike, max_files: int = 200) -> bool:
    """Cheap check used by the napari reader hook: is there a DICOM file among the first files?"""
    seen = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            if is_dicom_file(Path(root) / f):
                return True
            seen += 1
            if seen >= max_files:
                return False
    return False


# what pydicom and numpy raise on corrupt data elements, at read time or when an element is first touched
# (pydicom parses lazily), besides the errors caught where they occur (tests/test_fuzz_readers.py)
CORRUPT = (KeyError, ValueError, TypeError, IndexError, OverflowError, AttributeError, NotImplementedError,
           EOFError, OSError, ZeroDivisionError, BytesLengthException)


def read_dicom(path: str | os.PathLike, *, max_bytes: int | None = None) -> list[Volume]:
    """Read a DICOM file or a folder (recursively) into one :class:`Volume` per series.

    A single 2-D file gives a 2-D volume (``data[row, col]``); a multi-frame file gives a 3-D one.
    Any problem of a corrupt file is a one-line :class:`MedSegIOError` naming it (or the folder).
    """
    path = Path(path)
    try:
        return _read_dicom(path, max_bytes)
    except MedSegIOError:
        raise
    except CORRUPT as err:
        raise MedSegIOError(path, f"corrupt DICOM data ({err.__class__.__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from err


def _read_dicom(path: Path, max_bytes: int | None) -> list[Volume]:
    if path.is_dir():
        files = find_dicom_files(path)
        if not files:
            n = sum(len(f) for _, _, f in os.walk(path))
            raise MedSegIOError(path, f"no DICOM files found in this folder ({n} files checked)")
        datasets = _read_all(files)
    elif path.is_file():
        if path.stat().st_size == 0:
            raise MedSegIOError(path, "empty file (0 bytes), not a DICOM file")
        datasets = _read_all([path])
    else:
        raise MedSegIOError(path, "file or folder does not exist")
    return _volumes_from(path, datasets, max_bytes)


def _volumes_from(path: Path, datasets, max_bytes) -> list[Volume]:
    from .dicom_enhanced import SEG_SOP_CLASS, is_multiframe, read_multiframe

    images = [(f, ds) for f, ds in datasets if "PixelData" in ds or "FloatPixelData" in ds]
    if not images:
        if datasets and all(str(ds.get("Modality", "")) == "SR" for _, ds in datasets):
            raise MedSegIOError(path, "a DICOM structured report (SR), not an image: it holds points (read it with "
                                      "io.read_points; napari opens it as a Points layer)")
        raise MedSegIOError(path, f"{len(datasets)} DICOM file(s) but none holds image pixel data")
    segs = [(f, ds) for f, ds in images if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS]
    multi = [(f, ds) for f, ds in images if is_multiframe(ds) and str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS]
    special = {id(ds) for _, ds in segs + multi}
    series: dict[str, list] = defaultdict(list)
    for f, ds in images:
        if id(ds) not in special:
            series[str(ds.get("SeriesInstanceUID", "unknown-series"))].append((f, ds))

    volumes = []
    for f, ds in multi:
        volumes.extend(read_multiframe(f, ds, max_bytes))
    for uid, members in series.items():
        groups, differing, suffixes = _split_series(members)
        if len(groups) > 1:
            warnings.warn(
                f"{path}: series {uid} mixes {' and '.join(differing)}; opened as {len(groups)} separate volumes",
                MedSegIOWarning,
                stacklevel=2,
            )
        for group, suffix in zip(groups, suffixes):
            vol = _build_volume(path, group, max_bytes)
            if len(groups) > 1:
                vol.name = f"{vol.name}_{suffix}"
            volumes.append(vol)
    volumes.sort(key=lambda v: (str(v.metadata.get("SeriesNumber", "")), v.name))
    if segs:  # segmentations last, each placed on its referenced series when that series is among them
        from .dicom_seg import read_seg

        volumes.extend(read_seg(f, ds, volumes) for f, ds in segs)
    return volumes


def read_dicom_files(files, *, max_bytes: int | None = None) -> list[Volume]:
    """Read an explicit list of DICOM files (for example a multi-selection in a file dialog)."""
    files = [Path(f) for f in files]
    if not files:
        raise MedSegIOError(None, "no DICOM files given")
    return _volumes_from(files[0].parent, _read_all(files), max_bytes)


def _read_all(files: list[Path]):
    def one(f: Path):
        try:
            return f, pydicom.dcmread(f, force=f.suffix.lower() in (".dcm", ".ima", ".dicom"))
        except (InvalidDicomError, BytesLengthException, NotImplementedError, OSError, EOFError, ValueError,
                AttributeError, KeyError, TypeError, IndexError, OverflowError) as err:
            raise MedSegIOError(f, f"not a readable DICOM file ({err.__class__.__name__}: {err})") from err

    if len(files) < 8:
        return [one(f) for f in files]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        return list(pool.map(one, files))


def _stack_key(ds) -> tuple:
    """What must agree for slices to form one volume: image type (magnitude/phase...), echo,
    time point, orientation and size."""
    iop = ds.get("ImageOrientationPatient")
    iop_key = tuple(np.round(np.asarray(iop, dtype=float) / _ORIENT_TOL).astype(int)) if iop else None
    image_type = tuple(str(v) for v in ds.get("ImageType", []) or [])
    return (
        image_type,
        str(ds.get("EchoNumbers", "") or ""),
        str(ds.get("TemporalPositionIdentifier", "") or ""),
        iop_key,
        int(ds.Rows),
        int(ds.Columns),
    )


_KEY_PARTS = ("image types", "echoes", "time points", "orientations", "image sizes")


def _split_series(members):
    """Split one SeriesInstanceUID into stackable groups; also say what differed and a suffix each."""
    groups: dict[tuple, list] = defaultdict(list)
    for f, ds in members:
        groups[_stack_key(ds)].append((f, ds))
    keys = sorted(groups, key=lambda k: (-len(groups[k]), str(k)))
    differing = [i for i in range(len(_KEY_PARTS)) if len({k[i] for k in keys}) > 1]
    suffixes = []
    for n, k in enumerate(keys):
        if differing and differing[0] == 0:
            tags = [t for t in k[0] if not all(t in other[0] for other in keys)]
            suffixes.append(re.sub(r"[^A-Za-z0-9_]+", "-", "_".join(tags)) or f"part{n + 1}")
        elif differing and differing[0] == 1:
            suffixes.append(f"echo{k[1]}")
        elif differing and differing[0] == 2:
            suffixes.append(f"t{k[2]}")
        else:
            suffixes.append(f"part{n + 1}")
    return [groups[k] for k in keys], [_KEY_PARTS[i] for i in differing], suffixes


_IMAGECODECS = {  # transfer syntax -> imagecodecs decoder name
    "1.2.840.10008.1.2.4.90": "jpeg2k_decode",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "jpeg2k_decode",  # JPEG 2000
    "1.2.840.10008.1.2.4.80": "jpegls_decode",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "jpegls_decode",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.57": "ljpeg_decode",  # JPEG lossless, process 14
    "1.2.840.10008.1.2.4.70": "ljpeg_decode",  # JPEG lossless, process 14, first-order prediction
}


def _decode_released(ds) -> np.ndarray | None:
    """Decode one compressed grey frame with imagecodecs (GIL released), or None to let pydicom do it.

    Only used where the result is the stored values pydicom would give: one frame, one sample, and a
    decoded array whose shape and integer type match the header (Rows, Columns, BitsAllocated,
    PixelRepresentation); anything else (including a J2K codestream whose signedness disagrees with
    PixelRepresentation, which pydicom corrects) goes to pydicom."""
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    name = _IMAGECODECS.get(ts)
    if name is None or int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    try:
        import imagecodecs

        decode = getattr(imagecodecs, name)
        target = pixel_dtype(ds)
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        arr = decode(frame)
    except Exception:  # not installed, codec missing, odd encapsulation: pydicom decides (and reports)
        return None
    if arr.shape != (int(ds.Rows), int(ds.Columns)) or arr.dtype.kind not in "iu":
        return None
    if arr.dtype == target:
        return arr
    if arr.dtype.kind == target.kind and arr.dtype.itemsize < target.itemsize:  # e.g. 8-bit stream, 16 allocated
        return arr.astype(target)
    return None


def _raw_pixels(f: Path, ds) -> np.ndarray:
    """Stored pixel values (no rescale yet); a one-line error for undecodable data."""
    fast = _decode_released(ds)
    if fast is not None:
        return fast
    try:
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises many types for undecodable data
        ts = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
        raise MedSegIOError(
            f, f"cannot decode pixel data (transfer syntax {ts}; {err.__class__.__name__}: {str(err).splitlines()[0]})"
        ) from err
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) > 1:
        raise MedSegIOError(f, "colour (multi-sample) DICOM images are not supported as volumes")
    return arr


def _rescale(ds) -> tuple[float, float]:
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def _in_plane(ds):
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]
    spacing = np.asarray(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or [1.0, 1.0], dtype=np.float64)
    return row_cos, col_cos, spacing  # spacing = (between rows, between columns)


def _single_image(f0: Path, ds0, name: str, meta: dict, has_geometry: bool) -> Volume:
    """One image (a single slice, or one without the geometry to order it among others): 2-D, its pixel
    spacing (and its place, where it has one) in the affine."""
    raw = _raw_pixels(f0, ds0)
    arr = np.empty(raw.shape, output_dtype([raw], [_rescale(ds0)]))
    rescaled_into(arr, raw, *_rescale(ds0))
    affine = np.eye(4)
    if has_geometry:
        row_cos, col_cos, sp = _in_plane(ds0)
        lps = np.eye(4)
        lps[:3, 0] = col_cos * sp[0]  # array axis 0 = row index, moves along the column direction
        lps[:3, 1] = row_cos * sp[1]
        lps[:3, 2] = np.cross(row_cos, col_cos) * float(ds0.get("SliceThickness", 1) or 1)
        lps[:3, 3] = np.asarray(ds0.ImagePositionPatient, dtype=np.float64)
        affine = LPS_TO_RAS @ lps
    elif "PixelSpacing" in ds0:
        affine[0, 0], affine[1, 1] = (float(v) for v in ds0.PixelSpacing)
    meta["layout"] = "2d"
    return Volume(data=arr, affine=affine, name=name, kind="image", path=str(f0), metadata=meta)


def _build_volume(path: Path, members, max_bytes) -> Volume:
    f0, ds0 = members[0]
    name = series_name(ds0, path.name)
    meta = metadata(ds0, members)
    has_geometry = all("ImageOrientationPatient" in ds and "ImagePositionPatient" in ds for _, ds in members)
    rows, cols = int(ds0.Rows), int(ds0.Columns)

    if len(members) == 1 or not has_geometry:
        if len(members) > 1:
            raise MedSegIOError(
                path, f"{len(members)} slices of series {name} lack ImagePositionPatient/ImageOrientationPatient; cannot order them"
            )
        return _single_image(f0, ds0, name, meta, has_geometry)

    row_cos, col_cos, sp = _in_plane(ds0)
    normal = np.cross(row_cos, col_cos)
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for _, ds in members])
    order, step = slice_order(positions, normal, name, path, [f for f, _ in members])
    members = [members[i] for i in order]
    positions = positions[order]
    n = len(members)
    nbytes = rows * cols * n * 4
    check_allocation(path, nbytes, f"series {name} of {n} slices of {rows}x{cols}", max_bytes)

    if n >= 8:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
            raws = list(pool.map(lambda m: _raw_pixels(*m), members))
    else:
        raws = [_raw_pixels(*m) for m in members]
    shapes = {r.shape for r in raws}
    if len(shapes) > 1:
        raise MedSegIOError(path, f"series {name}: decoded slices have different shapes {sorted(shapes)}")
    rescales = [_rescale(ds) for _, ds in members]
    stack = np.empty((n, rows, cols), output_dtype(raws, rescales))  # (k, row, col), filled in place
    for k, (raw, (slope, inter)) in enumerate(zip(raws, rescales)):
        rescaled_into(stack[k], raw, slope, inter)
    del raws
    data = stack.transpose(2, 1, 0)  # (i=col, j=row, k=slice): a view, no copy

    lps = np.eye(4)
    lps[:3, 0] = row_cos * sp[1]  # i (column index) moves along the row direction
    lps[:3, 1] = col_cos * sp[0]
    lps[:3, 2] = (positions[-1] - positions[0]) / (n - 1)
    lps[:3, 3] = positions[0]
    off_axis = np.linalg.norm(np.cross(lps[:3, 2] / np.linalg.norm(lps[:3, 2]), normal))
    if off_axis > 1e-3:
        warnings.warn(
            f"{path}: series {name} is sheared (gantry tilt of {np.degrees(np.arcsin(min(off_axis, 1))):.2f} deg); "
            "the affine keeps the shear",
            MedSegIOWarning,
            stacklevel=3,
        )
    meta["slice_step_mm"] = step
    meta["layout"] = "3d"
    return Volume(data=data, affine=LPS_TO_RAS @ lps, name=name, kind="image", path=str(path), metadata=meta)


def find_source_series(where, affine, shape) -> Volume:
    """The DICOM series at ``where`` (a folder or file, as recorded when it was read) whose grid is
    ``affine`` / ``shape``: what a napari layer's labels lie on. A one-line error when it is gone or when no
    series there has that grid."""
    if not where or not Path(where).exists():
        raise MedSegIOError(where, "the DICOM series these labels lie on is no longer there; cannot reference it "
                                   "(save as NIfTI instead)")
    for vol in read_dicom(where):
        if vol.kind == "image" and tuple(np.shape(vol.data)[:3]) == tuple(shape)[:3] and same_placement(
                vol.affine, affine):
            return vol
    raise MedSegIOError(where, f"no DICOM series there has the labels' grid {tuple(shape)[:3]}: a SEG must lie on "
                               "its series (save as NIfTI instead)")
