"""Array preprocessing shared by training and inference (so both see exactly the same input)."""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from ..io.errors import InvalidInput


def to_channels(image: np.ndarray, channels: int, rgb: bool) -> np.ndarray:
    """(H, W) or (H, W, 3) -> (C, H, W) float32 with ``channels`` channels (grey is repeated, RGB -> grey
    averages)."""
    img = np.asarray(image, dtype=np.float32)
    if rgb or (img.ndim == 3 and img.shape[-1] in (3, 4)):
        img = img[..., :3].transpose(2, 0, 1)
    else:
        img = img[None]
    if img.shape[0] == channels:
        return img
    if img.shape[0] == 1:
        return np.repeat(img, channels, axis=0)
    if channels == 1:
        return img.mean(axis=0, keepdims=True)
    raise InvalidInput(f"cannot turn a {img.shape[0]}-channel image into {channels} channels")


def rescale01(img: np.ndarray) -> np.ndarray:
    """Full-range min-max to [0, 1] (a constant image gives zeros)."""
    lo, hi = float(img.min()), float(img.max())
    return ((img - lo) / (hi - lo if hi - lo > 1e-8 else 1.0)).astype(np.float32)


def image2d_norm(dtype, requested: str | None = None) -> str:
    """The normalisation of one 2D image, for training and inference alike: ``requested`` (a network's
    own, e.g. BCDU-Net's ``zscore+minmax``, or what a checkpoint recorded), except that ``rgb01`` (divide
    by 255) only applies to 8-bit images: any other type, or no request, gives ``rgb01`` for 8-bit and
    ``minmax`` otherwise."""
    eight_bit = np.dtype(dtype) == np.uint8
    if requested and (requested != "rgb01" or eight_bit):
        return requested
    return "rgb01" if eight_bit else "minmax"


def normalize(img: np.ndarray, mode: str, stats: tuple[float, float] | None = None) -> np.ndarray:
    """``rgb01``: divide by 255; ``zscore``: (x - mean) / std (stats from the whole volume when given);
    ``minmax``: percentiles 0.5-99.5 to [0, 1]; ``zscore+minmax``: z-score, then the full range to
    [0, 1] over all channels of the image (BCDU-Net's reference ``dataset_normalized``); ``window:LO:HI``:
    a fixed intensity window (CT: Hounsfield units), clipped to [LO, HI] and mapped to [0, 1], the same for
    every image (:func:`window_mode`)."""
    if mode.startswith("window:"):
        lo, hi = parse_window(mode)
        out = np.clip(img, lo, hi).astype(np.float32, copy=False)
        out -= lo
        out /= hi - lo
        return out
    if mode == "rgb01":
        return img / 255.0
    if mode == "zscore+minmax":
        return rescale01(normalize(img, "zscore", stats))
    if mode == "zscore":
        mean, std = stats if stats is not None else (float(img.mean()), float(img.std()))
        out = img - mean  # then in place: one temporary, not two (a 300-slice CT is 315 MB of float32)
        out /= std if std > 1e-8 else 1.0
        return out
    if mode == "minmax":
        lo, hi = stats if stats is not None else np.percentile(img, [0.5, 99.5])
        return np.clip((img - lo) / (hi - lo if hi - lo > 1e-8 else 1.0), 0, 1)
    raise InvalidInput(f"unknown normalisation {mode!r}")


def window_mode(lo: float, hi: float) -> str:
    """The ``normalize`` mode of a fixed window [``lo``, ``hi``] (for CT in Hounsfield units), as recorded
    in a checkpoint: ``window:-160:240``. Refused unless ``lo < hi`` and both are finite."""
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InvalidInput(f"an intensity window needs finite bounds with low < high, got [{lo:g}, {hi:g}]")
    return f"window:{lo:g}:{hi:g}"


def parse_window(mode: str) -> tuple[float, float]:
    """(lo, hi) of a ``window:LO:HI`` mode (:func:`window_mode`)."""
    try:
        _, lo, hi = mode.split(":")
        lo, hi = float(lo), float(hi)
    except ValueError:
        raise InvalidInput(f"unknown normalisation {mode!r}: a window is written window:LOW:HIGH") from None
    window_mode(lo, hi)
    return lo, hi


def volume_stats(data: np.ndarray, mode: str) -> tuple[float, float] | None:
    """Whole-volume statistics over the finite voxels, taken in memory order: ``ravel(order="K")`` is a view
    of a C- or Fortran-ordered volume (NIfTI volumes read Fortran-ordered), so no copy of the volume is made
    when every voxel is finite (a 300-slice 512x512 CT: 1.6 s of copying saved; the sums run in another
    order than the C-order copy of before, which moves the statistics in the last bits only)."""
    if mode not in ("zscore", "minmax"):
        return None
    flat = data.ravel(order="K")
    finite = flat if np.isfinite(flat).all() else flat[np.isfinite(flat)]
    if mode == "zscore":
        return float(finite.mean()), float(finite.std())
    if mode == "minmax":
        lo, hi = np.percentile(finite, [0.5, 99.5])
        return float(lo), float(hi)
    return None


def resize(arr: np.ndarray | torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """(C, H, W) -> (C, h, w). ``nearest`` for labels, ``area`` when shrinking images looks best."""
    t = torch.as_tensor(np.ascontiguousarray(arr) if isinstance(arr, np.ndarray) else arr)
    squeeze = t.ndim == 2
    t = t[None, None] if squeeze else t[None]
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(t.float(), size=tuple(size), mode=mode, **kw)[0]
    return out[0] if squeeze else out


def resize_planes(planes: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """(N, H, W) -> (N, h, w) float32, every plane resized on its own: the planes go on the batch axis, where
    torch computes each exactly as a single plane whatever N is (on the channel axis it vectorises 8 or more
    planes another way, which differs in the last bit)."""
    t = torch.as_tensor(np.ascontiguousarray(planes, dtype=np.float32))[:, None]
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(t, size=tuple(size), mode=mode, **kw)[:, 0].numpy()


def slice_axis_for(affine: np.ndarray, shape: tuple[int, ...], axis: int | str | None = None) -> int:
    """The axis to slice a volume along: explicit, ``"auto"`` = the through-plane axis (largest spacing,
    ties broken by the axis closest to superior-inferior)."""
    if isinstance(axis, int):
        if not 0 <= axis < 3:
            raise InvalidInput(f"slice axis must be 0, 1 or 2, got {axis}")
        return axis
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    codes = nib.aff2axcodes(affine)
    si = [i for i, c in enumerate(codes) if c in "SI"]
    best = np.flatnonzero(np.isclose(spacing, spacing.max(), rtol=1e-3))
    if si and si[0] in best:
        return si[0]
    return int(best[-1])


def sagittal_axes(affine: np.ndarray) -> tuple[int, int, int, bool, bool]:
    """(lr_axis, si_axis, ap_axis, flip_si, flip_ap) so that the 2D view has rows superior -> inferior and
    columns anterior -> posterior."""
    codes = nib.aff2axcodes(affine)
    lr = next(i for i, c in enumerate(codes) if c in "LR")
    si = next(i for i, c in enumerate(codes) if c in "SI")
    ap = next(i for i, c in enumerate(codes) if c in "AP")
    return lr, si, ap, codes[si] == "S", codes[ap] == "A"


def sagittal_view(data: np.ndarray, affine: np.ndarray, n_average: int = 7, offset: int = 0) -> tuple[np.ndarray, dict]:
    """Average ``n_average`` sagittal slices around the middle (as the disc-labeling paper) into a 2D
    image (rows superior -> inferior, columns anterior -> posterior) and say how to map back.
    ``offset`` moves the window that many slices off the middle (training augmentation: the choice of
    slices; inference always uses 0)."""
    lr, si, ap, flip_si, flip_ap = sagittal_axes(affine)
    mid = min(max(data.shape[lr] // 2 + int(offset), 0), data.shape[lr] - 1)
    lo, hi = max(0, mid - n_average // 2), min(data.shape[lr], mid + (n_average + 1) // 2)
    view = np.take(data, range(lo, hi), axis=lr).astype(np.float32).mean(axis=lr)
    # remaining axes keep their order; put SI first
    rem = [a for a in range(3) if a != lr]
    if rem.index(si) == 1:
        view = view.T
    if flip_si:
        view = view[::-1]
    if flip_ap:
        view = view[:, ::-1]
    geo = {"lr": lr, "si": si, "ap": ap, "flip_si": flip_si, "flip_ap": flip_ap, "mid": (lo + hi - 1) / 2,
           "shape": list(data.shape[:3])}
    return np.ascontiguousarray(view), geo


def view_to_voxel(rows: np.ndarray, cols: np.ndarray, geo: dict) -> np.ndarray:
    """Sagittal-view (row, col) positions (in view pixels) -> voxel coordinates (i, j, k)."""
    shape = geo["shape"]
    n = len(rows)
    vox = np.zeros((n, 3))
    si_idx = (shape[geo["si"]] - 1 - np.asarray(rows)) if geo["flip_si"] else np.asarray(rows)
    ap_idx = (shape[geo["ap"]] - 1 - np.asarray(cols)) if geo["flip_ap"] else np.asarray(cols)
    vox[:, geo["si"]] = si_idx
    vox[:, geo["ap"]] = ap_idx
    vox[:, geo["lr"]] = geo["mid"]
    return vox


def voxel_to_view(vox: np.ndarray, geo: dict) -> np.ndarray:
    """Voxel coordinates -> sagittal view (row, col)."""
    vox = np.asarray(vox, dtype=float).reshape(-1, 3)
    shape = geo["shape"]
    rows = vox[:, geo["si"]]
    cols = vox[:, geo["ap"]]
    if geo["flip_si"]:
        rows = shape[geo["si"]] - 1 - rows
    if geo["flip_ap"]:
        cols = shape[geo["ap"]] - 1 - cols
    return np.stack([rows, cols], axis=1)


def gaussian_heatmaps(points: np.ndarray, visible: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """One Gaussian per row of ``points`` (row, col) in a (K, H, W) map; invisible discs give zeros."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    maps = np.zeros((len(points), h, w), np.float32)
    for k, ((r, c), vis) in enumerate(zip(points, visible)):
        if vis:
            maps[k] = np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma**2))
    return maps


# ---------------------------------------------------------------- the one description, for training and inference


PRE_KEYS = ("input_size", "channels", "normalize", "layout", "slice_axis", "context")


@dataclass
class Preprocessing:
    """How an image becomes network input: built once when training data are prepared, stored in the
    checkpoint config (``preprocessing``), and applied by training (engine.data) and inference
    (engine.infer) through the same methods, so both see the same numbers.

    ``normalize`` is the requested normalisation (2D images go through :func:`image2d_norm`, volumes
    through :meth:`volume_norm`); ``slice_axis`` is an index or ``"auto"`` (:func:`slice_axis_for`);
    ``context`` > 0 stacks that many neighbouring slices on each side (LSTMSA's 2.5D input).
    ``extra`` keeps the other recorded keys (label names, disc prior ...) untouched."""

    input_size: tuple[int, int] = (256, 256)
    channels: int = 1
    normalize: str | None = None
    layout: str = "seg2d"
    slice_axis: int | str = "auto"
    context: int = 0
    extra: dict = field(default_factory=dict)


    @classmethod
    def from_config(cls, pre: dict, channels: int | None = None) -> "Preprocessing":
        pre = dict(pre or {})
        axis = pre.get("slice_axis", "auto")
        return cls(input_size=tuple(int(s) for s in pre.get("input_size", (256, 256))),
                   channels=int(channels if channels is not None else pre.get("channels", 1)),
                   normalize=pre.get("normalize"), layout=pre.get("layout", "seg2d"),
                   slice_axis=axis if axis in (None, "auto") else int(axis), context=int(pre.get("context", 0) or 0),
                   extra={k: v for k, v in pre.items() if k not in PRE_KEYS})

    def to_dict(self) -> dict:
        return {**self.extra, "input_size": list(self.input_size), "channels": self.channels,
                "normalize": self.normalize, "layout": self.layout,
                "slice_axis": self.slice_axis if self.slice_axis is not None else "auto", "context": self.context}

    # ------------------------------------------------------------ 2D images

    def image2d_mode(self, dtype) -> str:
        return image2d_norm(dtype, self.normalize)

    def image2d_full(self, image: np.ndarray, rgb: bool) -> np.ndarray:
        """(H, W[, 3]) -> normalised (C, H, W) at native size."""
        return normalize(to_channels(image, self.channels, rgb), self.image2d_mode(np.asarray(image).dtype))

    def image2d(self, image: np.ndarray, rgb: bool) -> np.ndarray:
        """(H, W[, 3]) -> the network input (C, h, w) float32."""
        return resize(self.image2d_full(image, rgb), self.input_size, "area").numpy()

    # ------------------------------------------------------------ volumes, slice by slice

    def volume_norm(self) -> str:
        """Volumes are normalised with whole-volume statistics; ``rgb01`` (a 2D model) means ``minmax``."""
        norm = self.normalize or "zscore"
        return "minmax" if norm == "rgb01" else norm

    def axis_for(self, affine: np.ndarray, shape: tuple[int, ...], axis: int | str | None = None) -> int:
        return slice_axis_for(affine, shape, self.slice_axis if axis is None else axis)

    def volume_slices(self, data: np.ndarray, affine: np.ndarray, axis: int | str | None = None):
        """(axis, slices): the volume normalised with its own statistics and the slice axis moved first."""
        data = np.asarray(data, dtype=np.float32)
        if data.ndim != 3:
            raise InvalidInput(f"expected a 3-D volume, got shape {data.shape}")
        ax = self.axis_for(affine, data.shape, axis)
        norm = self.volume_norm()
        return ax, np.moveaxis(normalize(data, norm, volume_stats(data, norm)), ax, 0)

    def volume_sample(self, slices: np.ndarray, k: int) -> np.ndarray:
        """Network input for slice ``k``: (C, h, w), or (2 * context + 1, C, h, w) with context."""
        return self.volume_samples(slices, [k])[0]

    def volume_samples(self, slices: np.ndarray, ks, chunk: int = 16) -> list[np.ndarray]:
        """Network inputs for slices ``ks`` (what :meth:`volume_sample` gives for each): every slice needed
        (with its neighbours, for context) is resized to the input size once, ``chunk`` planes per call
        (:func:`resize_planes`: each plane's values are those of resizing it alone; one call for many
        planes is ~20x faster than one per slice on a 512x512 CT), then repeated to the channels."""
        n = slices.shape[0]
        c = self.context
        stacks = [[min(max(k + d, 0), n - 1) for d in range(-c, c + 1)] for k in ks]
        need = sorted({i for st in stacks for i in st})
        small = {}
        for j in range(0, len(need), chunk):
            part = need[j: j + chunk]
            for i, plane in zip(part, resize_planes(slices[part], self.input_size, "bilinear")):
                small[i] = plane
        out = []
        for st in stacks:
            planes = np.stack([small[i] for i in st])[:, None]  # (2c + 1, 1, h, w)
            x = np.repeat(planes, self.channels, axis=1)
            out.append(x if c else x[0])
        return out
