"""napari writer contributions: Labels -> NIfTI/PNG with the source geometry, Points -> CSV/JSON/NIfTI,
Image -> NIfTI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..io.errors import MedSegIOError
from ._geometry import (
    META_KEY,
    affine_from_layer_state,
    layer_data_to_file_order,
    layer_shape,
    points_from_layer_data,
    reference_volume,
)


def _medseg_meta(attributes: dict) -> dict | None:
    return (attributes.get("metadata") or {}).get(META_KEY)


def _write_array(path: str, data: Any, attributes: dict, kind: str) -> list[str]:
    data = np.asarray(data)
    meta = _medseg_meta(attributes)
    target = Path(path)
    if io.is_image2d_path(target):
        if data.ndim != 2 and not (data.ndim == 3 and data.shape[-1] in (3, 4)):
            raise MedSegIOError(target, f"{data.ndim}-D data cannot be saved as a 2D image; use .nii.gz")
        return [str(io.write_image2d(target, data, kind=kind))]
    if not io.is_nifti_path(target):
        target = target.with_name(target.name + ".nii.gz")
    if meta is not None and meta.get("spatial_ndim", 3) == 3 and "ornt" in meta:
        ref = reference_volume(meta)
        expected = layer_shape(meta)
        if tuple(data.shape[-3:]) != expected[-3:]:
            raise MedSegIOError(
                target,
                f"layer shape {data.shape} does not match the source geometry: {meta.get('name')} is shown as "
                f"{expected}",
            )
        file_data = layer_data_to_file_order(data, meta)
        return [str(io.write_nifti(target, file_data, reference=ref, kind=kind))]
    if meta is not None:  # 2-D source with geometry (DICOM slice, photograph)
        ref = reference_volume(meta)
        return [str(io.write_nifti(target, data, reference=ref, kind=kind))]
    # a layer made in napari: derive the geometry from its own transform
    if data.ndim < 3:
        affine = np.diag([*attributes.get("scale", (1, 1))[::-1], 1.0, 1.0])
        return [str(io.write_nifti(target, data.T, affine, kind=kind))]
    affine_rev = affine_from_layer_state(attributes, data.ndim)
    file_data = data.transpose(*range(data.ndim - 1, -1, -1)) if data.ndim == 3 else np.moveaxis(data, 0, 3).transpose(2, 1, 0, 3)
    return [str(io.write_nifti(target, file_data, affine_rev, kind=kind))]


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    return _write_array(path, data, attributes, "labels")


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    if attributes.get("rgb") and not io.is_image2d_path(path):
        raise MedSegIOError(path, "RGB images are saved as .png or .tif")
    return _write_array(path, data, attributes, "image")


def write_points(path: str, data: Any, attributes: dict) -> list[str]:
    points = points_from_layer_data(data, attributes.get("features"), _medseg_meta(attributes))
    target = Path(path)
    low = target.name.lower()
    if not low.endswith((".csv", ".json", ".nii", ".nii.gz")):
        raise MedSegIOError(target, "points are saved as .csv, .json or .nii.gz (single-voxel disc labels)")
    return [str(io.write_points(target, points))]
