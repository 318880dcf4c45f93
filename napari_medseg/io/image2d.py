"""2D images (png, jpg, tif, bmp): endoscopy and dermoscopy photographs and their masks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import MedSegIOError
from .labels import looks_like_labels_name, looks_like_labels_values
from .volume import Volume

IMAGE2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def is_image2d_path(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(IMAGE2D_SUFFIXES)


def read_image2d(path: str | os.PathLike, *, kind: str | None = None) -> Volume:
    """Read a 2D image. RGB stays RGB (``data[row, col, 3]``), an opaque alpha channel is dropped,
    palette images keep their indices. Masks (name ends in ``_mask``/``_seg``..., or ``kind="labels"``)
    are labels."""
    path = Path(path)
    if not path.is_file():
        raise MedSegIOError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise MedSegIOError(path, "empty file (0 bytes), not an image")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            data = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "L", "I;16", "I", "F", "1", "RGB", "RGBA"):
                    data = np.asarray(im)
                else:  # CMYK, YCbCr, LA ...
                    data = np.asarray(im.convert("RGB"))
    except MemoryError:
        raise  # too big is not "unreadable": io.limits gives the size message
    except Exception as err:  # PIL/tifffile raise many types for undecodable files
        raise MedSegIOError(path, f"not a readable image ({err.__class__.__name__}: {err})") from err
    rgb = False
    if data.ndim == 3:
        if data.shape[-1] == 4 and (data[..., 3].min() == data[..., 3].max()):
            data = data[..., :3]
        if data.shape[-1] in (3, 4):
            rgb = True
        else:
            raise MedSegIOError(path, f"unsupported image shape {data.shape}; expected HxW or HxWx3")
    elif data.ndim != 2:
        raise MedSegIOError(path, f"unsupported image shape {data.shape}; expected HxW or HxWx3")
    data = np.ascontiguousarray(data)
    name = path.stem
    if kind is None:
        labelish = looks_like_labels_name(name) or path.parent.name.lower() in ("masks", "labels")
        kind = "labels" if (not rgb and labelish and looks_like_labels_values(data, strict=False)) else "image"
    meta = {"source_format": path.suffix.lower().lstrip("."), "layout": "2d"}
    return Volume(data=data, affine=np.eye(4), name=name, kind=kind, rgb=rgb, path=str(path), metadata=meta)


def write_image2d(path: str | os.PathLike, data: np.ndarray, *, kind: str = "labels") -> Path:
    """Write a 2D array as PNG/TIFF/BMP (JPEG is refused for labels: it would change the values)."""
    path = Path(path)
    data = np.asarray(data)
    suffix = path.suffix.lower()
    if suffix not in IMAGE2D_SUFFIXES:
        raise MedSegIOError(path, f"unsupported image extension {suffix!r}; use .png or .tif")
    if kind == "labels" and suffix in (".jpg", ".jpeg"):
        raise MedSegIOError(path, "labels cannot be saved as JPEG (lossy); use .png")
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[-1] in (3, 4))):
        raise MedSegIOError(path, f"a 2D image is needed, got shape {data.shape}")
    if kind == "labels":
        if data.size and (data.min() < 0 or data.max() > 65535):
            raise MedSegIOError(path, f"label values must lie in 0..65535 (got {data.min()}..{data.max()})")
        data = data.astype(np.uint8 if (not data.size or data.max() <= 255) else np.uint16)
    with atomic_path(path) as tmp:
        if suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, data)
        else:
            from PIL import Image

            im = Image.fromarray(data)
            if kind == "labels" and suffix == ".png" and data.dtype == np.uint8 and data.ndim == 2:
                # a palette PNG: the pixel values stay the class numbers (any reader that takes indices,
                # ours included, gets them back) and every image viewer shows the classes in colour
                im = im.convert("P")
                im.putpalette(LABEL_PALETTE)
            im.save(tmp, format={".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}.get(suffix, "PNG"))
    return path


def _label_palette() -> list[int]:
    """768 palette bytes: 0 black, then distinct saturated colours (napari-like) for classes 1-255."""
    base = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
    rng = np.random.default_rng(0)
    extra = [tuple(int(v) for v in rng.integers(40, 256, 3)) for _ in range(256 - len(base))]
    return [c for rgb in base + extra for c in rgb]


LABEL_PALETTE = _label_palette()
