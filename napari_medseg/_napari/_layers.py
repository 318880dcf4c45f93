"""Engine results -> napari layer data, keeping the source layer's world placement and metadata."""

from __future__ import annotations

import numpy as np

from ..geometry import META_KEY, RESULT_KEY, points_to_layer_data
from .. import io
from ..io import DiscPoints

TRANSFORM_KEYS = ("scale", "translate", "rotate", "shear", "affine")


def transform_of(layer) -> dict:
    """The keyword arguments that place a new layer exactly where ``layer`` is."""
    kw = {}
    for key in TRANSFORM_KEYS:
        value = getattr(layer, key, None)
        if value is None:
            continue
        kw[key] = value.affine_matrix if key == "affine" and hasattr(value, "affine_matrix") else np.asarray(value)
    return kw


def labels_layer_data(labels: np.ndarray, source, class_names: list[str], name: str, model: dict | None = None) -> tuple:
    """Labels already in ``source``'s layer order (``api.segment`` on a layer) -> a Labels layer on top of it.
    ``model``: who made them (``Segmentation.model``), kept for a DICOM SEG's algorithm identification."""
    meta = dict(getattr(source, "metadata", {}) or {})
    if model:
        meta[RESULT_KEY] = dict(model)
    kwargs = {"name": name, "metadata": meta, **transform_of(source)}
    n = int(max(labels.max() if labels.size else 0, len(class_names) - 1)) + 1
    kwargs["features"] = {"index": np.arange(n), "class": io.class_names(class_names, n)}
    return labels.astype(np.uint8 if n < 256 else np.uint16), kwargs, "labels"


def points_layer_data(points: DiscPoints, source, name: str, model: dict | None = None) -> tuple:
    """Disc points (RAS world coordinates from the engine) -> a Points layer in world coordinates that
    overlays ``source`` wherever it is placed (the engine saw ``source`` with its true affine)."""
    data, kwargs = points_to_layer_data(points, name=name)
    src_meta = (getattr(source, "metadata", {}) or {}).get(META_KEY) or {}
    kwargs["metadata"] = {META_KEY: {"affine": src_meta.get("affine"), "shape": src_meta.get("shape"),
                                     "source": src_meta.get("source"), "source_format": src_meta.get("source_format")}}
    if model:
        kwargs["metadata"][RESULT_KEY] = dict(model)
    return data, kwargs, "points"


def show_sagittal(viewer, thickness_mm: float = 12.0) -> None:
    """Show a 3-D viewer's sagittal plane (head up, anterior on the left: napari_medseg.geometry places
    layers as (I, P, L)), with a ``thickness_mm`` thick slice: the discs are not all on the middle sagittal
    plane (scoliosis, a tilted scan), and a disc point off it would hide its name; points layers project it."""
    if viewer.dims.ndim != 3:
        return
    viewer.dims.order = (2, 0, 1)
    thickness = list(viewer.dims.thickness)
    thickness[2] = float(thickness_mm)
    viewer.dims.thickness = thickness


def sagittal_once_added(viewer) -> None:
    """Show the sagittal plane (:func:`show_sagittal`) once the next layer lands in ``viewer`` (a sample or
    reader hands napari layer data, and napari resets the dims when it adds them); then let go."""
    if viewer is None:
        return

    def on_inserted(event=None):
        viewer.layers.events.inserted.disconnect(on_inserted)
        show_sagittal(viewer)

    viewer.layers.events.inserted.connect(on_inserted)
