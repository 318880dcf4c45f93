"""The one conversion between napari layers and the file-order volumes the engine sees, both ways.

Convention (docs/geometry.md):

* **World coordinates** of every layer this plugin makes are patient millimetres in the order and sign
  ``world = (-S, -A, -R) = (I, P, L)``: ``world == RAS[::-1] * -1``. napari draws the first displayed axis
  downwards and the second to the right, so with napari's default camera an axial slice shows anterior up
  and the patient's right on the screen's left, and sagittal and coronal slices show the head up, as in
  3D Slicer, ITK-SNAP and OHIF (the radiological convention). The map from RAS is a proper rotation
  (determinant +1), so 3-D views are not mirrored and layers from different files overlay exactly.
  :data:`WORLD_FROM_RAS` is that map; it is its own inverse.
* **Layer arrays** of 3-D/4-D volumes are the file's voxels reoriented to the closest (I, P, L) axes, so
  the first slider scrolls axial slices head to feet and the layer's scale is positive; a residual
  rotation (oblique acquisition) goes into the layer's ``affine``. 4-D: ``(t, I, P, L)``.
* The file's own affine, shape, reorientation and header travel in ``layer.metadata["medseg"]`` so that
  a layer made by this plugin goes back to *exactly* the file-order array and affine it came from (the
  inverse of the reader), and writers put labels and points back where they came from.
* A layer without that metadata (made in napari, or whose transform the user changed) is taken as it is:
  its array in layer order, with the file affine ``WORLD_FROM_RAS @ data_to_world`` from the layer's full
  transform (scale, translate, rotate, shear, affine).

Functions here take plain arrays, dicts and duck-typed layers (anything with ``data``, ``metadata``,
``rgb`` and ``data_to_world``); this module never imports napari, so api.py and the writer use it alike
and the engine only ever sees :class:`~napari_medseg.io.Volume` objects with a true affine.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np

from .io import DiscPoints, Volume, same_placement
from .io.errors import InvalidInput, MedSegIOError

META_KEY = "medseg"
RESULT_KEY = "medseg_result"  # layer metadata: which model made a result (name, version, weights checksum, dataset)
LAYER_AXCODES = ("L", "P", "I")  # file-order axis codes of a layer array, before its axes are reversed
_REV = np.eye(4)[[2, 1, 0, 3]]  # reverses the first three coordinates
WORLD_FROM_RAS = _REV @ np.diag([-1.0, -1.0, -1.0, 1.0])  # (R, A, S) -> (-S, -A, -R); an involution


def ras_to_world(ras: np.ndarray) -> np.ndarray:
    """RAS millimetres (N, 3) -> napari world coordinates (N, 3) of this plugin's layers."""
    return -np.asarray(ras, dtype=float).reshape(-1, 3)[:, ::-1]


def world_to_ras(world: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ras_to_world` (the same map)."""
    return ras_to_world(world)


# ---------------------------------------------------------------- volumes -> layers (the reader)


def _inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    inv = np.zeros_like(ornt)
    for i, (ax, flip) in enumerate(ornt):
        inv[int(ax)] = [i, flip]
    return inv


def layer_ornt(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation that takes file axes to the closest (L, P, I) axes."""
    return nib.orientations.ornt_transform(nib.io_orientation(affine), nib.orientations.axcodes2ornt(LAYER_AXCODES))


def geometry_meta(vol: Volume) -> dict[str, Any]:
    """What the inverse conversion and the writers need (plain Python types + header bytes)."""
    meta = {
        "affine": np.asarray(vol.affine).tolist(),
        "shape": list(vol.data.shape),
        "spatial_ndim": vol.spatial_ndim,
        "rgb": vol.rgb,
        "source": vol.path,
        "name": vol.name,
        "kind": vol.kind,
    }
    for key in ("nifti_header", "nifti_version", "source_format", "layout", "time_step"):
        if key in vol.metadata:
            meta[key] = vol.metadata[key]
    if vol.spatial_ndim == 3 and vol.metadata.get("layout") != "2d":
        meta["ornt"] = layer_ornt(vol.affine).tolist()
    return meta


def file_to_layer_order(data: np.ndarray, meta: dict) -> np.ndarray:
    """File-order array (x, y, z[, t]) -> layer array ((t,) I, P, L) for a volume with this metadata."""
    data = np.asarray(data)
    if "ornt" not in meta:
        return data
    data_c = nib.apply_orientation(data, np.asarray(meta["ornt"]))  # trailing (time) axes untouched
    out = data_c.transpose(2, 1, 0, *range(3, data_c.ndim))
    if out.ndim == 4:  # (I, P, L, t) -> (t, I, P, L)
        out = np.moveaxis(out, 3, 0)
    return out


def layer_data_to_file_order(data: np.ndarray, meta: dict) -> np.ndarray:
    """Inverse of :func:`file_to_layer_order` (labels, probabilities shaped like the layer)."""
    data = np.asarray(data)
    if "ornt" not in meta:
        return data
    if data.ndim == 4:
        data = np.moveaxis(data, 0, 3)
    file_order = data.transpose(2, 1, 0, *range(3, data.ndim))
    return nib.apply_orientation(file_order, _inverse_ornt(np.asarray(meta["ornt"])))


def layer_world_matrix(meta: dict) -> np.ndarray:
    """The layer's data -> world matrix (4x4, spatial axes) that :func:`volume_to_layer_data` gives."""
    ornt = np.asarray(meta["ornt"])
    aff_c = np.asarray(meta["affine"], dtype=float) @ nib.orientations.inv_ornt_aff(ornt, tuple(meta["shape"][:3]))
    return WORLD_FROM_RAS @ aff_c @ _REV


def volume_to_layer_data(vol: Volume) -> tuple[np.ndarray, dict[str, Any]]:
    """Array and layer keyword arguments (name, scale, affine, metadata ...) for a Volume."""
    meta = geometry_meta(vol)
    info = {k: v for k, v in vol.metadata.items() if k not in ("nifti_header", "files")}
    kwargs: dict[str, Any] = {"name": vol.name, "metadata": {META_KEY: meta, "info": info}}
    if "ornt" not in meta:  # 2-D image or 2-D DICOM slice
        kwargs["scale"] = tuple(vol.spacing[:2])
        return vol.data, kwargs
    data = file_to_layer_order(vol.data, meta)
    m = layer_world_matrix(meta)
    scale = np.linalg.norm(m[:3, :3], axis=0)
    aff = np.eye(4)
    aff[:3, :3] = m[:3, :3] / scale
    aff[:3, 3] = m[:3, 3]
    if data.ndim == 4:
        big = np.eye(5)
        big[1:, 1:] = aff
        aff = big
        scale = np.r_[float(vol.metadata.get("time_step", 1.0) or 1.0), scale]
    kwargs["scale"] = tuple(float(s) for s in scale)
    kwargs["affine"] = aff
    return np.ascontiguousarray(data), kwargs


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


# ---------------------------------------------------------------- layers -> volumes (api, writers, widgets)


def world_matrix_of(layer, ndim: int | None = None) -> np.ndarray:
    """A layer's full data -> world transform as an (n+1, n+1) matrix, read through the layer's own
    ``data_to_world`` (scale, translate, rotate, shear and affine composed exactly as napari does)."""
    ndim = int(ndim if ndim is not None else getattr(layer, "ndim", np.ndim(layer.data)))
    origin = np.asarray(layer.data_to_world(np.zeros(ndim)), dtype=float)
    m = np.eye(ndim + 1)
    for i in range(ndim):
        e = np.zeros(ndim)
        e[i] = 1.0
        m[:ndim, i] = np.asarray(layer.data_to_world(e), dtype=float) - origin
    m[:ndim, ndim] = origin
    return m


def spatial_ndim_of(data_shape: tuple[int, ...], rgb: bool) -> int:
    return len(data_shape) - int(bool(rgb))


def _plugin_meta(metadata: dict | None, data_shape: tuple[int, ...], matrix: np.ndarray | None) -> dict | None:
    """The layer's medseg metadata when it still describes the layer (same shape, same placement)."""
    meta = (metadata or {}).get(META_KEY)
    if not meta or "shape" not in meta or "affine" not in meta:
        return None
    if "ornt" not in meta:
        return meta if tuple(meta["shape"])[:2] == tuple(data_shape)[:2] else None
    if tuple(layer_shape(meta)) != tuple(data_shape):
        return None
    if matrix is not None and not same_placement(np.asarray(matrix)[-4:, -4:], layer_world_matrix(meta)):
        return None  # moved, rotated or rescaled in napari since it was read: its own transform wins
    return meta


def layer_to_volume(data, *, matrix: np.ndarray | None = None, metadata: dict | None = None, rgb: bool = False,
                    name: str = "layer") -> Volume:
    """A napari layer's array and transform -> the file-order :class:`Volume` the engine works on.

    ``matrix`` is the layer's data -> world transform (:func:`world_matrix_of`; identity when ``None``).
    A layer made by this plugin (its metadata still matching) gives back exactly the volume the reader
    read; any other layer gives its own array with the file affine implied by its transform. 2-D images
    (grey or RGB) keep their (rows, columns) order. The result's ``metadata["layer"]`` tells
    :func:`volume_to_layer_order` how to map results back onto the layer.
    """
    arr = np.asarray(data)
    nd = spatial_ndim_of(arr.shape, rgb)
    if nd not in (2, 3, 4):
        raise InvalidInput(f"{name}: a {arr.ndim}-D layer{' (RGB)' if rgb else ''} cannot be segmented: expected a "
                         "2-D image, a 3-D volume or a 4-D (time, z, y, x) series")
    if nd == 4 and rgb:
        raise InvalidInput(f"{name}: a 4-D RGB layer cannot be segmented; split it into frames first")
    meta = _plugin_meta(metadata, arr.shape, matrix)
    if meta is not None and "ornt" in meta:
        file_data = layer_data_to_file_order(arr, meta)
        extra = {k: meta[k] for k in ("nifti_header", "nifti_version", "source_format", "time_step") if k in meta}
        return Volume(data=file_data, affine=np.asarray(meta["affine"], dtype=float), name=name, rgb=False,
                      path=meta.get("source"), metadata={**extra, "layout": "3d", "layer": {"plugin_meta": meta}})
    if nd == 2 or (nd == 3 and rgb):
        sp = np.ones(2) if matrix is None else np.linalg.norm(matrix[-3:-1, -3:-1], axis=0)
        affine = np.diag([sp[0], sp[1], 1.0, 1.0]) if meta is None else np.asarray(meta["affine"], dtype=float)
        return Volume(data=arr, affine=affine, name=name, rgb=rgb, path=(meta or {}).get("source"),
                      metadata={"layout": "2d", "layer": {"plugin_meta": meta}})
    spatial = np.eye(4) if matrix is None else np.asarray(matrix, dtype=float)[-4:, -4:]
    affine = WORLD_FROM_RAS @ spatial
    file_data = arr if nd == 3 else np.moveaxis(arr, 0, 3)  # (t, a, b, c) -> (a, b, c, t)
    extra = {}
    if nd == 4 and matrix is not None:
        extra["time_step"] = float(np.asarray(matrix)[0, 0])
    return Volume(data=file_data, affine=affine, name=name, rgb=False, metadata={**extra, "layout": "3d",
                                                                                  "layer": {"plugin_meta": None}})


def volume_of_layer(layer) -> Volume:
    """:func:`layer_to_volume` for a napari layer object (duck-typed)."""
    rgb = bool(getattr(layer, "rgb", False))
    return layer_to_volume(layer.data, matrix=world_matrix_of(layer), metadata=getattr(layer, "metadata", None),
                           rgb=rgb, name=str(getattr(layer, "name", "layer")))


def volume_of_labels_on(labels, image) -> Volume:
    """The volume of a labels layer drawn on ``image``. napari's new-labels button copies the image's shape
    and transform but not its metadata: such a layer is converted with the image's metadata, so that it
    lands on the image's file-order grid exactly like the image does."""
    vol = volume_of_layer(labels)
    image_meta = (getattr(image, "metadata", None) or {}).get(META_KEY)
    if vol.metadata.get("layer", {}).get("plugin_meta") is None and image_meta and \
            np.shape(labels.data)[-3:] == np.shape(image.data)[-3:] and \
            same_placement(world_matrix_of(labels), world_matrix_of(image)):
        adopted = layer_to_volume(labels.data, matrix=world_matrix_of(labels), metadata=image.metadata,
                                  name=str(getattr(labels, "name", "labels")))
        if adopted.metadata["layer"]["plugin_meta"] is not None:
            return adopted
    return vol


def volume_to_layer_order(arr: np.ndarray, vol: Volume) -> np.ndarray:
    """An array in ``vol``'s file order (labels (x, y, z[, t]), or probabilities with the class axis
    first) -> the order of the layer ``vol`` came from (:func:`layer_to_volume`)."""
    arr = np.asarray(arr)
    info = vol.metadata.get("layer")
    if info is None or vol.metadata.get("layout") == "2d":
        return arr
    meta = info.get("plugin_meta")
    spatial = 4 if np.ndim(vol.data) == 4 else 3
    lead = arr.ndim - spatial  # a class axis in front
    if meta is not None:
        moved = np.moveaxis(arr, list(range(lead)), list(range(arr.ndim - lead, arr.ndim))) if lead else arr
        # file_to_layer_order handles (x, y, z[, t]); carry trailing class axes through the orientation
        out = nib.apply_orientation(moved, np.asarray(meta["ornt"]))
        out = out.transpose(2, 1, 0, *range(3, out.ndim))
        if spatial == 4:
            out = np.moveaxis(out, 3, 0)
        return np.moveaxis(out, list(range(out.ndim - lead, out.ndim)), list(range(lead))) if lead else out
    if spatial == 4:
        return np.moveaxis(arr, lead + 3, lead)
    return arr


def file_index_of_world(world_point, vol: Volume) -> np.ndarray:
    """The (fractional) file-order voxel index of a napari world point (spatial part, last 3 values)."""
    w = np.asarray(world_point, dtype=float)[-3:]
    ras = world_to_ras(w)[0]
    return nib.affines.apply_affine(np.linalg.inv(np.asarray(vol.affine, dtype=float)), ras)


# ---------------------------------------------------------------- points


def points_to_layer_data(points: DiscPoints, name: str = "discs") -> tuple[np.ndarray, dict[str, Any]]:
    """Disc points as napari world coordinates (identity transform: layer data == world), with names, SCT
    numbers and confidences."""
    coords = ras_to_world(points.world) if len(points) else np.zeros((0, 3))
    features = {
        "name": [d.name for d in points.discs],
        "sct_number": np.array(points.numbers, dtype=int),
        "confidence": np.array([d.confidence for d in points.discs], dtype=float),
        "flag": [d.flag for d in points.discs],  # why a person should check it ("" = nothing found)
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
        # flagged discs get a thick red ring, the others a thin white one
        "border_color": [[1.0, 0.1, 0.1, 1.0] if d.flag else [1.0, 1.0, 1.0, 1.0] for d in points.discs]
        if len(points) else "white",
        "border_width": [0.35 if d.flag else 0.1 for d in points.discs] if len(points) else 0.1,
        "metadata": {META_KEY: meta},
    }
    return np.asarray(coords, dtype=float), kwargs


def points_from_layer_data(data: np.ndarray, features: Any, meta: dict | None,
                           matrix: np.ndarray | None = None) -> DiscPoints:
    """Inverse of :func:`points_to_layer_data`; layers the user edited (moved, added) are fine.

    ``matrix`` is the points layer's data -> world transform (a layer made with napari's new-points
    button carries the image's scale and translate); points go through it to world, then to RAS.
    Points without a disc number get one from their name; a point with neither is refused.
    """
    from .io.points import Disc, disc_number

    data = np.asarray(data, dtype=float).reshape(-1, np.shape(data)[-1] if np.ndim(data) == 2 else 3)
    if data.shape[1] < 3:
        raise MedSegIOError(None, f"disc points need 3-D coordinates, got {data.shape[1]}-D points")
    if matrix is not None:
        m = np.asarray(matrix, dtype=float)
        world = data @ m[:-1, :-1].T + m[:-1, -1]
    else:
        world = data
    ras = world_to_ras(world[:, -3:])
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

    numbers, names, confs, flags = column("sct_number"), column("name"), column("confidence"), column("flag")
    discs = []
    for row, r, num, nm, conf, flag in zip(data, ras, numbers, names, confs, flags):
        if missing(num):
            if not missing(nm):
                try:
                    num = disc_number(str(nm))
                except ValueError as err:
                    raise MedSegIOError(None, f"point {tuple(row)}: {err}") from err
            else:
                raise MedSegIOError(None, f"point at {tuple(np.round(row, 2))} has no disc name or number")
        c = 1.0 if missing(conf) else float(conf)
        discs.append(Disc(int(num), tuple(float(v) for v in r), c, flag="" if missing(flag) else str(flag)))
    affine = None if meta.get("affine") is None else np.asarray(meta["affine"], dtype=float)
    shape = None if meta.get("shape") is None else tuple(meta["shape"])
    return DiscPoints(discs, affine, shape, meta.get("source")).sorted()


def points_of_layer(layer) -> DiscPoints:
    """A napari Points layer (duck-typed: ``data``, ``features``, ``metadata``, ``data_to_world``) as
    disc points in RAS world coordinates, through the layer's own transform."""
    return points_from_layer_data(layer.data, getattr(layer, "features", None),
                                  (getattr(layer, "metadata", None) or {}).get(META_KEY),
                                  matrix=world_matrix_of(layer, np.shape(layer.data)[-1] if np.ndim(layer.data) == 2 else 3))
