"""Readers and writers for medical images: NIfTI, DICOM series, 2D images and disc points.

No torch, no Qt. Every reader returns :class:`Volume` objects (array + affine + metadata).
"""

from __future__ import annotations

import os
from pathlib import Path

from .dicom import find_dicom_files, folder_has_dicom, is_dicom_file, read_dicom, read_dicom_files
from .errors import MedSegIOError, MedSegIOWarning
from .image2d import IMAGE2D_SUFFIXES, is_image2d_path, read_image2d, write_image2d
from .nifti import is_nifti_path, read_nifti, strip_nifti_suffix, write_nifti
from .points import (
    Disc,
    DiscPoints,
    disc_name,
    disc_number,
    is_points_path,
    is_sr_file,
    points_from_label_volume,
    read_points,
    write_points,
)
from .volume import Volume

__all__ = [
    "Disc", "DiscPoints", "IMAGE2D_SUFFIXES", "MedSegIOError", "MedSegIOWarning", "Volume", "disc_name",
    "disc_number", "find_dicom_files", "folder_has_dicom", "is_dicom_file", "is_image2d_path", "is_nifti_path",
    "is_points_path", "is_sr_file", "points_from_label_volume", "read", "read_dicom", "read_dicom_files", "read_image2d", "read_nifti",
    "read_points", "strip_nifti_suffix", "write_image2d", "write_nifti", "write_points", "file_stem",
]


def file_stem(path: str | os.PathLike) -> str:
    """File name without its image extension (``a.nii.gz -> a``)."""
    name = Path(path).name
    if is_nifti_path(name):
        return strip_nifti_suffix(name)
    return Path(name).stem


def read(path: str | os.PathLike, **kwargs) -> list[Volume]:
    """Read any supported image path into a list of volumes (DICOM folders may hold several series)."""
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
