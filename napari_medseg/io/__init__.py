"""Readers and writers for medical images: NIfTI, DICOM series, 2D images and disc points.

No torch, no Qt. Every reader returns :class:`Volume` objects (array + affine + metadata).
"""

from __future__ import annotations

import os
from pathlib import Path

import importlib
from typing import TYPE_CHECKING

from .errors import InvalidInput, MedSegIOError, MedSegIOWarning

if TYPE_CHECKING:
    from .volume import Volume

# the readers import pydicom, nibabel and imageio (about half a second): loaded on first use, so that
# `napari-medseg --help` and the CLI's argument errors do not pay for them (PEP 562)
_LAZY = {
    "dicom": ("find_dicom_files", "folder_has_dicom", "is_dicom_file", "read_dicom", "read_dicom_files"),
    "image2d": ("IMAGE2D_SUFFIXES", "is_image2d_path", "read_image2d", "write_image2d"),
    "nifti": ("is_nifti_path", "read_nifti", "strip_nifti_suffix", "write_nifti"),
    "disc_points": ("Disc", "DiscPoints", "disc_name", "disc_number"),
    "points": ("is_points_path", "is_sr_file", "points_from_label_volume", "read_points", "write_points"),
    "volume": ("PLACEMENT_ATOL", "Volume", "class_names", "same_placement"),
}
_OWNER = {name: module for module, names in _LAZY.items() for name in names}

__all__ = sorted([*_OWNER, InvalidInput.__name__, MedSegIOError.__name__, MedSegIOWarning.__name__, "read", "file_stem"])


def __getattr__(name: str):
    module = _OWNER.get(name)
    if module is None:
        if (Path(__file__).parent / f"{name}.py").is_file():  # a submodule: io.atomic, io.datasets ...
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


def file_stem(path: str | os.PathLike) -> str:
    """File name without its image extension (``a.nii.gz -> a``)."""
    from .nifti import is_nifti_path, strip_nifti_suffix

    name = Path(path).name
    if is_nifti_path(name):
        return strip_nifti_suffix(name)
    return Path(name).stem


def read(path: str | os.PathLike, **kwargs) -> list[Volume]:
    """Read any supported image path into a list of volumes (DICOM folders may hold several series)."""
    from .dicom import is_dicom_file, read_dicom
    from .image2d import is_image2d_path, read_image2d
    from .nifti import is_nifti_path, read_nifti

    path = Path(path)
    if path.is_dir():
        return read_dicom(path, **kwargs)
    if not path.exists():
        raise MedSegIOError(path, "file or folder does not exist")
    if is_nifti_path(path):
        return [read_nifti(path, **kwargs)]
    if is_image2d_path(path):
        return [read_image2d(path, **kwargs)]
    if is_dicom_file(path):
        return read_dicom(path, **kwargs)
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        raise MedSegIOError(path, "not a DICOM file (no DICOM header or data elements, although the name says so)")
    raise MedSegIOError(path, "unsupported file type (expected NIfTI, DICOM, png, jpg, tif or bmp)")
