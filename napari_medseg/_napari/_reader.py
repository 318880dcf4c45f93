"""napari reader contribution: NIfTI, DICOM files and folders, disc points files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import io
from ..geometry import points_to_layer_data, volume_to_layer_data

LayerData = tuple[Any, dict, str]


def _is_disc_label_nifti(path: Path) -> bool:
    return io.is_nifti_path(path) and "labels-disc" in path.name.lower()


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_layers` only when sure that every path is ours (napari's template contract):
    a NIfTI file, a DICOM file (by its content), a folder holding DICOM files, or the plugin's points
    files. Anything else gets ``None`` so that another reader can take it."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for p in map(Path, paths):
        if p.is_dir():
            if (p / ".zarray").exists() or (p / ".zgroup").exists() or p.suffix == ".zarr":
                return None
            if not io.folder_has_dicom(p, max_files=50):
                return None
            continue
        if not (io.is_nifti_path(p) or io.is_points_path(p) or (p.is_file() and io.is_dicom_file(p))):
            return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read one path (or several) into napari layer data. Errors are one-line :class:`MedSegIOError`."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if len(paths) > 1 and all(Path(p).is_file() and io.is_dicom_file(p) for p in paths):
        return [_layer(v) for v in io.read_dicom_files(paths)]
    out: list[LayerData] = []
    for p in map(Path, paths):
        if io.is_points_path(p) or _is_disc_label_nifti(p) or (p.is_file() and io.is_sr_file(p)):
            points = io.read_points(p)
            data, kwargs = points_to_layer_data(points, name=io.file_stem(p))
            out.append((data, kwargs, "points"))
        else:
            out.extend(_layer(v) for v in io.read(p))
    return out


def _layer(vol: io.Volume) -> LayerData:
    data, kwargs = volume_to_layer_data(vol)
    if vol.kind == "labels":
        names = vol.metadata.get("label_names")  # a DICOM SEG's segment labels: the layer's class names
        if names:
            kwargs["features"] = {"index": np.arange(len(names)), "class": list(names)}
        return data.astype(data.dtype if data.dtype.kind in "iu" else "int32"), kwargs, "labels"
    info = kwargs["metadata"]["info"]
    if "WindowCenter" in info and "WindowWidth" in info:
        c, w = info["WindowCenter"], info["WindowWidth"]
        kwargs["contrast_limits"] = (c - w / 2, c + w / 2)
    kwargs["rgb"] = vol.rgb  # never let napari guess: a (.., 256, 4) volume is not RGBA
    if not vol.rgb:
        kwargs.setdefault("colormap", "gray")
    return data, kwargs, "image"
