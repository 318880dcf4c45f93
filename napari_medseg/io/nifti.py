"""NIfTI-1/2 reading and writing with the geometry kept exactly (nibabel underneath)."""

from __future__ import annotations

import gzip
import io
import os
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from .atomic import atomic_path
from .errors import MedSegIOError, MedSegIOWarning
from .labels import looks_like_labels_name, looks_like_labels_values
from .limits import check_allocation
from .volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
INTENT_LABEL = 1002  # NIFTI_INTENT_LABEL


def is_nifti_path(path: str | os.PathLike) -> bool:
    name = os.fspath(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    for suf in (".nii.gz", ".nii"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _load_header(path: Path):
    if not path.is_file():
        raise MedSegIOError(path, "file does not exist")
    size = path.stat().st_size
    if size == 0:
        raise MedSegIOError(path, "empty file (0 bytes), not a NIfTI image")
    try:
        img = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as err:
        raise MedSegIOError(path, f"not a valid NIfTI file ({err})") from err
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise MedSegIOError(path, f"truncated or corrupt NIfTI file ({err.__class__.__name__}: {err})") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedSegIOError(path, f"not a NIfTI file (nibabel read it as {type(img).__name__})")
    return img, size


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing singleton dimensions beyond the 4th; refuse true 5-D data."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4:
        raise MedSegIOError(path, f"{len(shape)}-D data (shape {shape}) is not supported; expected 2-D, 3-D or 4-D")
    if len(shape) < 2:
        raise MedSegIOError(path, f"{len(shape)}-D data (shape {shape}) is not an image")
    return shape


# what nibabel and numpy raise on a corrupt header or data, besides the errors caught where they occur
# (tests/test_fuzz_readers.py mutates real files and checks that nothing else escapes)
CORRUPT = (KeyError, ValueError, TypeError, IndexError, OverflowError, AttributeError, EOFError, OSError,
           zlib.error)


def read_nifti(path: str | os.PathLike, *, kind: str | None = None, max_bytes: int | None = None) -> Volume:
    """Read a ``.nii``/``.nii.gz`` file into a :class:`Volume`.

    ``kind`` forces ``"image"`` or ``"labels"``; by default integer files with a label-like name
    (``_seg``, ``_label``, ``labels-disc`` ...) or label-like values are labels.
    Refuses, before allocating, shapes that would not fit in memory (``max_bytes``, default: the
    memory available, see :func:`napari_medseg.io.limits.check_allocation`). Any other problem of a
    corrupt file is a one-line :class:`MedSegIOError` naming it.
    """
    path = Path(path)
    try:
        return _read_nifti(path, kind, max_bytes)
    except MedSegIOError:
        raise
    except CORRUPT as err:
        raise MedSegIOError(path, f"corrupt NIfTI header or data ({err.__class__.__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from err


def _read_nifti(path: Path, kind: str | None, max_bytes: int | None) -> Volume:
    img, size = _load_header(path)
    hdr = img.header
    shape = _spatial_shape(path, img.shape)
    # nibabel moves scl_slope/scl_inter from the header into the array proxy when loading
    slope, inter = float(getattr(img.dataobj, "slope", 1.0)), float(getattr(img.dataobj, "inter", 0.0))
    scaled = slope != 1.0 or inter != 0.0
    raw_dtype = np.dtype(hdr.get_data_dtype())
    out_dtype = np.dtype(np.float32) if scaled and raw_dtype.kind in "iu" else raw_dtype
    nbytes = int(np.prod(shape, dtype=np.float64) * out_dtype.itemsize)
    check_allocation(path, nbytes, f"header claims shape {shape} of {out_dtype}", max_bytes)
    if not path.name.lower().endswith(".gz"):
        needed = int(hdr.get_data_offset()) + int(np.prod(shape) * raw_dtype.itemsize)
        if size < needed:
            raise MedSegIOError(path, f"truncated file: header needs {needed} bytes, file has {size}")
    try:
        if scaled:
            data = np.asarray(img.get_fdata(dtype=np.float32))
        else:
            data = np.asanyarray(img.dataobj)
        data = np.asarray(data).reshape(shape)
    except (EOFError, OSError, zlib.error, ValueError) as err:
        raise MedSegIOError(path, f"truncated or corrupt voxel data ({err.__class__.__name__}: {err})") from err

    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            warnings.warn(
                f"{path}: {bad} voxel(s) are NaN or Inf; they are kept as they are", MedSegIOWarning, stacklevel=2
            )
    name = strip_nifti_suffix(path.name)
    if kind is None:
        kind = "labels" if _is_label_volume(name, data, hdr) else "image"
    spatial_units, time_units = hdr.get_xyzt_units()
    intent = hdr.get_intent()
    metadata = {
        "source_format": "nifti",
        "description": bytes(hdr["descrip"]).decode("latin-1").strip("\x00 "),
        "intent": intent[0],
        "intent_name": intent[2],
        "spatial_units": spatial_units,
        "time_units": time_units,
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
        "file_dtype": str(raw_dtype),
        "nifti_header": bytes(hdr.binaryblock),
        "nifti_version": 2 if isinstance(img, nib.Nifti2Image) else 1,
    }
    if len(shape) == 4:
        metadata["time_step"] = float(hdr.get_zooms()[3]) if len(hdr.get_zooms()) > 3 else 1.0
    return Volume(data=data, affine=img.affine, name=name, kind=kind, path=str(path), metadata=metadata)


def _is_label_volume(name: str, data: np.ndarray, hdr) -> bool:
    if int(hdr["intent_code"]) == INTENT_LABEL:
        return True
    if looks_like_labels_name(name):
        return looks_like_labels_values(data, strict=False)
    return looks_like_labels_values(data, strict=True)


def _header_from_metadata(meta: dict | None):
    block = (meta or {}).get("nifti_header")
    if not block:
        return None
    if (meta or {}).get("nifti_version") == 2:
        return nib.Nifti2Header.from_fileobj(io.BytesIO(block))
    return nib.Nifti1Header.from_fileobj(io.BytesIO(block))


def write_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    reference: Volume | None = None,
    kind: str = "image",
    description: str | None = None,
) -> Path:
    """Write ``data`` as NIfTI, atomically.

    Geometry comes from ``reference`` (a :class:`Volume` from :func:`read_nifti` or the DICOM reader;
    its original header is reused so that the stored affine is bit-identical) or from ``affine``.
    ``data`` must have the reference's spatial shape. ``kind="labels"`` stores an integer array with
    the NIfTI label intent and no intensity scaling.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise MedSegIOError(path, "output name must end with .nii or .nii.gz")
    data = np.asarray(data)
    hdr = None
    if reference is not None:
        ref_shape = tuple(reference.data.shape[: reference.spatial_ndim])
        if tuple(data.shape[: len(ref_shape)]) != ref_shape or data.ndim not in (len(ref_shape), len(ref_shape) + 1):
            raise MedSegIOError(
                path, f"array shape {data.shape} does not match the source geometry shape {ref_shape} of {reference.name}"
            )
        affine = reference.affine
        hdr = _header_from_metadata(reference.metadata)
    if affine is None:
        raise MedSegIOError(path, "no geometry given: pass an affine or a reference volume")
    affine = np.asarray(affine, dtype=np.float64)
    if kind == "labels":
        data = _label_array(path, data)
    elif data.dtype == np.float64:
        data = data.astype(np.float32)
    elif data.dtype == bool:
        data = data.astype(np.uint8)

    if hdr is not None and np.array_equal(hdr.get_best_affine(), affine):
        hdr = hdr.copy()
        hdr.set_data_shape(data.shape)
        hdr.set_data_dtype(data.dtype)
        hdr.set_slope_inter(1.0, 0.0)
        image_class = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        img = image_class(data, None, header=hdr)
    else:
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm", "sec")
    if kind == "labels":
        img.header.set_intent("label")
        img.header["cal_min"], img.header["cal_max"] = 0, float(data.max()) if data.size else 0
    if description is not None:
        img.header["descrip"] = description.encode("latin-1", "replace")[:79]
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def _label_array(path: Path, data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise MedSegIOError(path, "labels must be whole numbers (got non-integer or NaN values)")
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if lo < 0:
        raise MedSegIOError(path, f"labels must be >= 0 (found {lo})")
    for dt in (np.uint8, np.uint16, np.int32):
        if hi <= np.iinfo(dt).max:
            return data.astype(dt, copy=False)
    raise MedSegIOError(path, f"label value {hi} is too large")
