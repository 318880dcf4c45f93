"""napari writer contributions: Labels -> NIfTI/PNG with the source geometry, Points -> CSV/JSON/NIfTI,
Image -> NIfTI. The layer -> file conversion is :mod:`napari_medseg.geometry`'s, the one the engine uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..geometry import META_KEY, RESULT_KEY, layer_shape, layer_to_volume, points_from_layer_data, reference_volume
from ..io.errors import MedSegIOError


def _medseg_meta(attributes: dict) -> dict | None:
    return (attributes.get("metadata") or {}).get(META_KEY)


def world_matrix_from_state(state: dict, ndim: int) -> np.ndarray:
    """A layer's data -> world matrix from the attributes napari passes to writers (scale, translate,
    rotate, shear, affine), composed as napari composes them."""
    from napari.utils.transforms import Affine  # the GUI layer owns napari's transform conventions

    tr = Affine(scale=state.get("scale"), translate=state.get("translate"), rotate=state.get("rotate"),
                shear=state.get("shear"), ndim=ndim)
    full = state.get("affine", None)
    full = np.eye(ndim + 1) if full is None else np.asarray(getattr(full, "affine_matrix", full), dtype=float)
    return full @ tr.affine_matrix


def _write_array(path: str, data: Any, attributes: dict, kind: str) -> list[str]:
    data = np.asarray(data)
    meta = _medseg_meta(attributes)
    rgb = bool(attributes.get("rgb", False))
    target = Path(path)
    if io.is_image2d_path(target):
        if data.ndim != 2 and not (data.ndim == 3 and data.shape[-1] in (3, 4)):
            raise MedSegIOError(target, f"{data.ndim}-D data cannot be saved as a 2D image; use .nii.gz")
        return [str(io.write_image2d(target, data, kind=kind))]
    if not io.is_nifti_path(target):
        target = target.with_name(target.name + ".nii.gz")
    if meta is not None and "ornt" in meta and tuple(data.shape[-3:]) != tuple(layer_shape(meta)[-3:]):
        raise MedSegIOError(target, f"layer shape {data.shape} does not match the source geometry: "
                                    f"{meta.get('name')} is shown as {layer_shape(meta)}")
    ndim = data.ndim - int(rgb)
    vol = layer_to_volume(data, matrix=world_matrix_from_state(attributes, ndim), metadata=attributes.get("metadata"),
                          rgb=rgb, name=str(attributes.get("name", "layer")))
    plugin_meta = vol.metadata["layer"]["plugin_meta"]
    if plugin_meta is not None:  # back exactly where it came from, with the source header
        return [str(io.write_nifti(target, vol.data, reference=reference_volume(plugin_meta), kind=kind))]
    if vol.metadata.get("layout") == "2d":  # 2-D layer: NIfTI index order is (column-major) (x, y)
        sp = np.diag(vol.affine)[:2]
        return [str(io.write_nifti(target, vol.data.T if vol.data.ndim == 2 else vol.data.transpose(1, 0, 2),
                                   np.diag([sp[1], sp[0], 1.0, 1.0]), kind=kind))]
    return [str(io.write_nifti(target, vol.data, vol.affine, kind=kind))]


def _dicom_source(target: Path, meta: dict | None):
    """The DICOM series a layer was read from (re-read from where it was opened), for a SEG or an SR."""
    from ..io.dicom import find_source_series

    if not meta or meta.get("source_format") not in (None, "dicom") or not meta.get("source"):
        raise MedSegIOError(target, "this layer does not lie on a DICOM series: a DICOM SEG/SR must reference the "
                                    "series it belongs to (save as .nii.gz or .csv instead)")
    return find_source_series(meta["source"], meta["affine"], meta["shape"])


def _result_of(attributes: dict) -> dict:
    return dict((attributes.get("metadata") or {}).get(RESULT_KEY) or {})


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    if str(path).lower().endswith(".dcm"):  # a DICOM SEG referencing the layer's series
        from ..io.dicom_seg import write_seg

        target = Path(path)
        meta = _medseg_meta(attributes)
        source = _dicom_source(target, meta)
        rgb = False
        vol = layer_to_volume(np.asarray(data), matrix=world_matrix_from_state(attributes, np.ndim(data)),
                              metadata=attributes.get("metadata"), rgb=rgb, name=str(attributes.get("name", "layer")))
        features = attributes.get("features")
        names = list(features["class"]) if features is not None and "class" in features else None
        result = _result_of(attributes)
        written, _notes = write_seg(target, vol.data, source, class_names=names, dataset=result.get("dataset"),
                                    algorithm={k: result[k] for k in ("name", "version", "weights_sha256")
                                               if k in result} or None)
        return [str(written)]
    return _write_array(path, data, attributes, "labels")


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    if attributes.get("rgb") and not io.is_image2d_path(path):
        raise MedSegIOError(path, "RGB images are saved as .png or .tif")
    return _write_array(path, data, attributes, "image")


def write_points(path: str, data: Any, attributes: dict) -> list[str]:
    data = np.asarray(data, dtype=float)
    ndim = data.shape[1] if data.ndim == 2 and data.size else 3
    matrix = world_matrix_from_state(attributes, ndim)
    points = points_from_layer_data(data, attributes.get("features"), _medseg_meta(attributes), matrix=matrix)
    target = Path(path)
    low = target.name.lower()
    if low.endswith(".dcm"):  # a DICOM SR referencing the series the discs were labelled on
        result = _result_of(attributes)
        algorithm = {k: result[k] for k in ("name", "version") if k in result} or None
        return [str(io.write_points(target, points, reference=_dicom_source(target, _medseg_meta(attributes)),
                                    algorithm=algorithm))]
    if not low.endswith((".csv", ".json", ".nii", ".nii.gz")):
        raise MedSegIOError(target, "points are saved as .csv, .json, .nii.gz (single-voxel disc labels) or .dcm "
                                    "(DICOM SR)")
    return [str(io.write_points(target, points))]
