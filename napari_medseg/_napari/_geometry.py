"""Volume <-> napari layer conversion, keeping world placement exact.

napari convention used by this plugin:

* 3-D/4-D data are shown reoriented to the closest RAS axes and with the axes reversed, so the array
  a layer holds is indexed ``(S, A, R)`` (``(t, S, A, R)`` for 4-D) and the first slider scrolls axial
  slices. Any residual rotation (oblique acquisitions) goes into the layer's ``affine``.
* napari world coordinates are RAS+ millimetres in reversed order: ``world = (z, y, x)``. So
  ``layer.data_to_world(idx)[::-1] == nibabel.affines.apply_affine(file_affine, file_index)``.
* The file's own affine, shape, reorientation and header travel in ``layer.metadata["medseg"]`` so
  writers put labels and points back exactly where they came from.

This module imports numpy and nibabel only; the hooks in this package pass its output to napari.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np

from ..io import DiscPoints, Volume
from ..io.errors import MedSegIOError

META_KEY = "medseg"
_REV = np.eye(4)[[2, 1, 0, 3]]  # reverses the first three coordinates


def _inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    inv = np.zeros_like(ornt)
    for i, (ax, flip) in enumerate(ornt):
        inv[int(ax)] = [i, flip]
    return inv


def geometry_meta(vol: Volume) -> dict[str, Any]:
    """What writers need to reconstruct the source geometry (plain Python types + header bytes)."""
    meta = {
        "affine": np.asarray(vol.affine).tolist(),
        "shape": list(vol.data.shape),
        "spatial_ndim": vol.spatial_ndim,
        "rgb": vol.rgb,
        "source": vol.path,
        "name": vol.name,
        "kind": vol.kind,
    }
    for key in ("nifti_header", "nifti_version", "source_format", "layout"):
        if key in vol.metadata:
            meta[key] = vol.metadata[key]
    if vol.spatial_ndim == 3 and vol.metadata.get("layout") != "2d":
        meta["ornt"] = nib.io_orientation(vol.affine).tolist()
    return meta


def volume_to_layer_data(vol: Volume) -> tuple[np.ndarray, dict[str, Any]]:
    """Array and layer keyword arguments (name, scale, affine, metadata ...) for a Volume."""
    meta = geometry_meta(vol)
    info = {k: v for k, v in vol.metadata.items() if k not in ("nifti_header", "files")}
    kwargs: dict[str, Any] = {"name": vol.name, "metadata": {META_KEY: meta, "info": info}}
    if "ornt" not in meta:  # 2-D image or 2-D DICOM slice
        data = vol.data
        kwargs["scale"] = tuple(vol.spacing[:2])
        return data, kwargs
    ornt = np.asarray(meta["ornt"])
    spatial_shape = vol.data.shape[:3]
    data_c = nib.apply_orientation(vol.data, ornt)  # trailing (time) axes untouched
    aff_c = vol.affine @ nib.orientations.inv_ornt_aff(ornt, spatial_shape)
    napari_aff = _REV @ aff_c @ _REV  # index (S,A,R) -> world (z,y,x)
    spatial = data_c.transpose(2, 1, 0, *range(3, data_c.ndim))
    if spatial.ndim == 4:  # (S, A, R, t) -> (t, S, A, R)
        spatial = np.moveaxis(spatial, 3, 0)
    lin = napari_aff[:3, :3]
    scale = np.linalg.norm(lin, axis=0)
    rot = lin / scale
    aff = np.eye(4)
    aff[:3, :3] = rot
    aff[:3, 3] = napari_aff[:3, 3]
    if spatial.ndim == 4:
        big = np.eye(5)
        big[1:, 1:] = aff
        aff = big
        scale = np.r_[float(vol.metadata.get("time_step", 1.0) or 1.0), scale]
    kwargs["scale"] = tuple(float(s) for s in scale)
    kwargs["affine"] = aff
    return np.ascontiguousarray(spatial), kwargs


def layer_data_to_file_order(data: np.ndarray, meta: dict) -> np.ndarray:
    """Inverse of :func:`volume_to_layer_data` for an array shaped like the layer (labels, probabilities)."""
    data = np.asarray(data)
    if "ornt" not in meta:
        return data
    if data.ndim == 4:
        data = np.moveaxis(data, 0, 3)
    file_order = data.transpose(2, 1, 0, *range(3, data.ndim))
    return nib.apply_orientation(file_order, _inverse_ornt(np.asarray(meta["ornt"])))


def layer_shape(meta: dict) -> tuple[int, ...]:
    """Shape of the layer array that :func:`volume_to_layer_data` makes from a volume with this metadata."""
    shape = tuple(meta["shape"])
    if "ornt" not in meta:
        return shape
    canon = [0, 0, 0]
    for size, (ax, _flip) in zip(shape[:3], meta["ornt"]):
        canon[int(ax)] = size
    return tuple(shape[3:]) + tuple(canon[::-1])


def reference_volume(meta: dict) -> Volume:
    """A data-less stand-in of the source volume (geometry + header) for the writers."""
    shape = tuple(meta["shape"])
    vol_meta = {k: meta[k] for k in ("nifti_header", "nifti_version", "source_format", "layout") if k in meta}
    return Volume(
        data=np.broadcast_to(np.zeros((), np.uint8), shape),
        affine=np.asarray(meta["affine"], dtype=np.float64),
        name=meta.get("name", "source"),
        rgb=bool(meta.get("rgb", False)),
        path=meta.get("source"),
        metadata=vol_meta,
    )


def affine_from_layer_state(state: dict, ndim: int) -> np.ndarray:
    """File affine implied by a layer's own transform, for layers that carry no medseg metadata.

    Uses the plugin's convention (world = reversed RAS, data index = reversed file index).
    """
    from napari.utils.transforms import Affine  # imported lazily: only the GUI layer calls this

    tr = Affine(
        scale=state.get("scale"), translate=state.get("translate"), rotate=state.get("rotate"),
        shear=state.get("shear"), ndim=ndim,
    )
    full = np.asarray(state.get("affine", np.eye(ndim + 1)))
    if hasattr(full, "affine_matrix"):
        full = full.affine_matrix
    m = np.asarray(full) @ tr.affine_matrix
    m = m[-4:, -4:] if ndim >= 3 else m
    return _REV @ m @ _REV


# ---------------------------------------------------------------- points


def points_to_layer_data(points: DiscPoints, name: str = "discs") -> tuple[np.ndarray, dict[str, Any]]:
    """Disc points as napari world coordinates (z, y, x), with names, SCT numbers and confidences."""
    coords = points.world[:, ::-1] if len(points) else np.zeros((0, 3))
    features = {
        "name": [d.name for d in points.discs],
        "sct_number": np.array(points.numbers, dtype=int),
        "confidence": np.array([d.confidence for d in points.discs], dtype=float),
    }
    meta = {
        "affine": None if points.affine is None else np.asarray(points.affine).tolist(),
        "shape": None if points.shape is None else list(points.shape),
        "source": points.source,
    }
    kwargs = {
        "name": name,
        "features": features,
        "text": {"string": "{name}", "size": 10, "color": "yellow", "anchor": "upper_left"},
        "size": 4,
        "face_color": "confidence",
        "face_colormap": "viridis",
        "metadata": {META_KEY: meta},
    }
    return np.asarray(coords, dtype=float), kwargs


def points_from_layer_data(data: np.ndarray, features: Any, meta: dict | None) -> DiscPoints:
    """Inverse of :func:`points_to_layer_data`; layers the user edited (moved, added) are fine.

    Points without a disc number get one from their name, or from their order head to feet after
    the last known disc.
    """
    from ..io.points import Disc, disc_number

    data = np.asarray(data, dtype=float).reshape(-1, 3)
    meta = meta or {}
    n = len(data)

    def column(key):
        if features is None:
            return [None] * n
        try:
            col = list(features[key])
        except (KeyError, TypeError, IndexError):
            return [None] * n
        return col + [None] * (n - len(col))

    def missing(v):
        return v is None or v == "" or (isinstance(v, float) and np.isnan(v))

    numbers, names, confs = column("sct_number"), column("name"), column("confidence")
    discs = []
    for row, num, nm, conf in zip(data, numbers, names, confs):
        if missing(num):
            if not missing(nm):
                try:
                    num = disc_number(str(nm))
                except ValueError as err:
                    raise MedSegIOError(None, f"point {tuple(row)}: {err}") from err
            else:
                raise MedSegIOError(None, f"point at {tuple(np.round(row, 2))} has no disc name or number")
        c = 1.0 if missing(conf) else float(conf)
        discs.append(Disc(int(num), tuple(float(v) for v in row[::-1]), c))
    affine = None if meta.get("affine") is None else np.asarray(meta["affine"], dtype=float)
    shape = None if meta.get("shape") is None else tuple(meta["shape"])
    return DiscPoints(discs, affine, shape, meta.get("source")).sorted()

