"""Datasets: the three folder layouts of docs/engine.md ("Datasets"), in-memory arrays, splits, augmentation (MONAI).

* 2D: ``DIR/images/*`` + ``DIR/masks/*`` matched by stem (png, jpg, tif, bmp; JPEG masks are
  thresholded at 127, 0/255 PNG masks become 0/1).
* 3D: ``DIR/imagesTr/*.nii.gz`` + ``DIR/labelsTr/*.nii.gz`` (Decathlon / nnU-Net), sliced along an
  axis into 2D (or 2.5D stacks of three neighbouring slices for LSTMSA).
* Discs: ``DIR/images/*.nii.gz`` + ``DIR/labels/<stem>_labels-disc.nii.gz`` (SCT single voxels) or
  ``<stem>_discs.csv``: a sagittal view per volume with one Gaussian heatmap per disc.

Everything is decoded, normalised and resized once and kept in memory; augmentation runs per step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import io
from ..io.errors import InvalidInput, MedSegIOError
from . import preprocess as pp
from .expectations import input_profile

IMAGE_EXT = io.IMAGE2D_SUFFIXES


class DataError(MedSegIOError):
    """A dataset problem (layout, pairing, split, labels). One line, names the file or folder."""


@dataclass
class Layout:
    kind: str  # "seg2d" | "seg3d" | "discs"
    root: Path
    pairs: dict[str, tuple[Path, Path]]  # stem -> (image, target)
    label_names: list[str] | None = None
    # partial labels: stem -> the classes drawn for that case (``dataset.json`` ``contoured``); a class not
    # listed is unknown there, not background. None: every class is labelled in every case
    contoured: dict[str, list[int]] | None = None


def _stem(p: Path) -> str:
    return io.file_stem(p)


def _files(folder: Path, exts) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(exts):
            out[_stem(p)] = p
    return out


def discover(root: str | os.PathLike) -> Layout:
    """Recognise the layout of a dataset folder and pair images with their targets by stem."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        kind, images, targets = "seg2d", _files(root / "images", IMAGE_EXT), _files(root / "masks", IMAGE_EXT)
    elif (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        kind = "seg3d"
        images = {k.removesuffix("_0000"): v for k, v in _files(root / "imagesTr", (".nii", ".nii.gz")).items()}
        targets = _files(root / "labelsTr", (".nii", ".nii.gz"))
    elif (root / "images").is_dir() and (root / "labels").is_dir():
        kind = "discs"
        images = _files(root / "images", (".nii", ".nii.gz"))
        targets = {}
        for p in sorted((root / "labels").iterdir()):
            low = p.name.lower()
            for suffix in ("_labels-disc.nii.gz", "_labels-disc.nii", "_discs.csv", "_discs.json"):
                if low.endswith(suffix):
                    targets.setdefault(p.name[: -len(suffix)], p)
    else:
        raise DataError(root, "unknown dataset layout: expected images/ + masks/, imagesTr/ + labelsTr/, "
                              "or images/ + labels/ (disc labels)")
    if not images:
        raise DataError(root, "the dataset has no images")
    missing = sorted(set(images) - set(targets))
    orphans = sorted(set(targets) - set(images))
    if missing or orphans:
        parts = []
        if missing:
            parts.append(f"{len(missing)} image(s) without a label (e.g. {missing[0]})")
        if orphans:
            parts.append(f"{len(orphans)} label(s) without an image (e.g. {orphans[0]})")
        raise DataError(root, "unpaired files: " + "; ".join(parts))
    names = None
    if kind == "seg3d" and (root / "dataset.json").is_file():
        labels = json.loads((root / "dataset.json").read_text()).get("labels", {})
        if labels:
            inv = {int(v): k for k, v in labels.items()} if all(str(v).isdigit() for v in labels.values()) else \
                {int(k): v for k, v in labels.items()}
            default = io.class_names([], max(inv) + 1)
            names = [inv.get(i, default[i]) for i in range(len(default))]
    contoured = read_contoured(root / "dataset.json", set(images), len(names) if names else None) \
        if kind == "seg3d" and (root / "dataset.json").is_file() else None
    return Layout(kind, root, {s: (images[s], targets[s]) for s in images}, names, contoured)


def read_contoured(path: Path, stems: set[str], n_classes: int | None) -> dict[str, list[int]] | None:
    """``dataset.json``'s ``contoured`` (stem -> classes drawn for that case; partial labels), or None when
    it has none. Accepted as a JSON object or as the text of one (``headneck-ct`` stores it as a Python
    literal in a string: read with ``ast.literal_eval``, never evaluated). Every stem must be a case of the
    folder and every class one of ``labels``; a case the list leaves out is taken as fully labelled."""
    raw = json.loads(path.read_text()).get("contoured")
    if raw is None:
        return None
    if isinstance(raw, str):
        import ast

        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError) as err:
            raise DataError(path, f"'contoured' is neither an object nor the text of one ({err})") from err
    if not isinstance(raw, dict):
        raise DataError(path, f"'contoured' must map each case to its drawn classes, got {type(raw).__name__}")
    out = {}
    for stem, classes in raw.items():
        stem = str(stem)
        if stem not in stems:
            raise DataError(path, f"'contoured' names {stem!r}, which has no image in the folder")
        try:
            cls = sorted({int(c) for c in classes})
        except (TypeError, ValueError) as err:
            raise DataError(path, f"'contoured' of {stem!r} must list class numbers, got {classes!r}") from err
        if any(c < 1 or (n_classes is not None and c >= n_classes) for c in cls):
            raise DataError(path, f"'contoured' of {stem!r} lists {cls}: classes are 1 ... {(n_classes or 2) - 1}")
        out[stem] = cls
    return out


def split(layout: Layout, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
          require_train: bool = True) -> dict[str, list[str]]:
    """``split.json`` when present (every stem must exist; for scoring, ``require_train=False``, a split
    with only ``test`` is enough), else a seeded random split."""
    path = layout.root / "split.json"
    stems = sorted(layout.pairs)
    if path.is_file():
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(path, f"unreadable split ({err})") from err
        out = {k: list(obj.get(k, [])) for k in ("train", "val", "test")}
        unknown = sorted({s for v in out.values() for s in v} - set(stems))
        if unknown:
            raise DataError(path, f"{len(unknown)} stem(s) in the split have no files (e.g. {unknown[0]})")
        if require_train and not out["train"]:
            raise DataError(path, "the split has an empty 'train' list")
        return out
    rng = np.random.default_rng(seed)
    order = [stems[i] for i in rng.permutation(len(stems))]
    n_val = max(1, int(round(val_fraction * len(order)))) if len(order) > 2 else 0
    n_test = int(round(test_fraction * len(order))) if len(order) > 5 else 0
    return {"val": sorted(order[:n_val]), "test": sorted(order[n_val:n_val + n_test]),
            "train": sorted(order[n_val + n_test:])}


# ---------------------------------------------------------------- loading into memory


@dataclass
class Prepared:
    """Arrays ready for the network: images (N, C, H, W) or (N, 3, C, H, W), targets (N, H, W) int or
    (N, K, H, W) heatmaps with ``visible`` (N, K)."""

    task: str
    images: np.ndarray
    targets: np.ndarray
    visible: np.ndarray | None = None
    stems: list[str] = field(default_factory=list)
    num_classes: int = 2
    preprocessing: dict = field(default_factory=dict)
    profiles: list = field(default_factory=list)  # engine.expectations.input_profile of each case
    # discs: other sagittal views of each case (N, V, H, W), one channel in [0, 1], for the augmentation's
    # choice of slices (VIEW_CHOICES, then the depth sweep); images[i] is the view inference sees
    views: np.ndarray | None = None
    # discs: (N, C, H, W) uint8, 1 where a target channel counts in the loss (engine/disc_targets.py), and
    # the depth channels' heights (N, V, K) for each of ``views`` (targets hold them for ``images``)
    known: np.ndarray | None = None
    depth: np.ndarray | None = None
    # segmentation with partial labels: (N, K) bool, the classes labelled in each sample (background always);
    # None: every class everywhere (engine/losses.py ``SegmentationLoss``, ``soft_dice``)
    present: np.ndarray | None = None

    def subset(self, idx) -> "Prepared":
        """The samples ``idx`` (a list of indices), every per-sample array cut alike."""
        idx = list(idx)
        cut = lambda a: None if a is None else a[idx]  # noqa: E731
        return Prepared(self.task, self.images[idx], self.targets[idx], cut(self.visible),
                        [self.stems[i] for i in idx], self.num_classes, dict(self.preprocessing),
                        [self.profiles[i] for i in idx] if len(self.profiles) == len(self.stems) else list(self.profiles),
                        cut(self.views), cut(self.known), cut(self.depth), cut(self.present))

    @classmethod
    def join(cls, parts: list["Prepared"], prefixes: list[str] | None = None) -> "Prepared":
        """One set from several prepared by the same rules (same task, sample shape and preprocessing, which
        is checked); stems get ``prefixes[i] + "/"`` where given; classes: the largest count."""
        first = parts[0]
        for p in parts[1:]:
            if p.task != first.task or p.images.shape[1:] != first.images.shape[1:]:
                raise InvalidInput(f"cannot join samples of shape {p.images.shape[1:]} ({p.task}) to "
                                 f"{first.images.shape[1:]} ({first.task}): prepared by other rules (channels differ?)")
        if len(parts) == 1:
            return first
        stems = [(f"{prefixes[i]}/{s}" if prefixes and prefixes[i] else s) for i, p in enumerate(parts) for s in p.stems]
        cat = lambda name: None if getattr(first, name) is None else np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        k = max(p.num_classes for p in parts)
        present = None
        if any(p.present is not None for p in parts):  # a fully labelled part: every class present
            present = np.concatenate([np.ones((len(p.images), k), bool) if p.present is None else
                                      np.pad(p.present, ((0, 0), (0, k - p.present.shape[1])), constant_values=True)
                                      for p in parts])
        return cls(first.task, np.concatenate([p.images for p in parts]), np.concatenate([p.targets for p in parts]),
                   cat("visible"), stems, k, dict(first.preprocessing),
                   [pr for p in parts for pr in p.profiles], cat("views"), cat("known"), cat("depth"), present)


def slice_split(labelled: list[int], current: int, val_fraction: float = 0.2,
                single_image: bool = False) -> tuple[list[int], list[int], str]:
    """The validation policy for training on one image held in memory (napari layers): ``(train, val,
    in words)``. The ``current`` slice (the one the user looks at: the preview) and every
    ``1/val_fraction``-th labelled slice validate, the other labelled slices train; a 2-D image
    (``single_image``) trains and validates on itself, and so do slices too few to hold any out."""
    if single_image:
        return [current], [current], "the training image itself (one image: there is nothing to hold out)"
    step = max(1, int(round(1 / float(val_fraction))))
    val = [current] + [k for k in labelled[step // 2::step] if k != current]
    train = [k for k in labelled if k not in val]
    if not train:
        return val, val, "the training slices themselves (too few labelled slices to hold any out)"
    return train, val, "the current slice and every k-th labelled slice"


def read_mask(path: Path) -> np.ndarray:
    """A 2D mask as class indices: JPEG masks thresholded at 127; 0/255 masks become 0/1."""
    vol = io.read_image2d(path, kind="labels")
    m = vol.data
    if m.ndim == 3:
        m = m[..., :3].max(axis=-1)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return (m > 127).astype(np.int64)
    values = np.unique(m)
    if set(values.tolist()) <= {0, 255}:
        return (m > 127).astype(np.int64)
    if values.max() < 32:
        return m.astype(np.int64)
    raise DataError(path, f"unexpected mask values {values[:8].tolist()}...: expected 0/255, 0/1 or class indices < 32")


def seg2d_pair(pre: pp.Preprocessing, vol: io.Volume, mask: np.ndarray, where=None) -> tuple[np.ndarray, np.ndarray]:
    """One 2D image + class mask -> (network input, target at input size), by ``pre``'s rule."""
    if mask.shape != vol.data.shape[:2]:
        raise DataError(where, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                               f"{vol.data.shape[1]}x{vol.data.shape[0]}")
    target = pp.resize(np.asarray(mask).astype(np.float32), pre.input_size, "nearest").numpy().astype(np.int64)
    return pre.image2d(vol.data, vol.rgb), target


def seg3d_pairs(pre: pp.Preprocessing, vol: io.Volume, labels: np.ndarray, where=None) -> tuple[int, list, list]:
    """One volume + label volume (same file order) -> (slice axis, inputs, targets), slice by slice by
    ``pre``'s rule (the same slices :meth:`engine.infer.Predictor.segment_volume` sees)."""
    labels = np.asarray(labels)
    if vol.data.shape[:3] != labels.shape[:3]:
        raise DataError(where, f"label shape {labels.shape} differs from image shape {vol.data.shape}")
    if np.ndim(vol.data) != 3:
        raise DataError(where, f"expected a 3-D volume, got shape {vol.data.shape}")
    if labels.min() < 0:
        raise DataError(where, "negative label values")
    ax, slices = pre.volume_slices(vol.data, vol.affine)
    lab = np.moveaxis(labels, ax, 0).astype(np.float32)
    images = pre.volume_samples(slices, range(len(slices)))
    targets = [pp.resize(lab[k], pre.input_size, "nearest").numpy().astype(np.int64) for k in range(len(slices))]
    return ax, images, targets


def _check_cancel(cancel, stem) -> None:
    if cancel is not None and cancel.cancelled:
        raise InterruptedError(f"cancelled while preparing the data (at {stem})")


def prepare_seg2d(layout: Layout, stems: list[str], size: tuple[int, int], channels: int,
                  normalize: str | None = None, cancel=None) -> Prepared:
    pre = pp.Preprocessing(input_size=tuple(size), channels=channels, normalize=normalize, layout="seg2d")
    images, targets, norms, profiles = [], [], set(), []
    for s in stems:
        _check_cancel(cancel, s)
        img_path, mask_path = layout.pairs[s]
        vol = io.read_image2d(img_path, kind="image")
        profiles.append(input_profile(vol))
        norms.add(pre.image2d_mode(vol.data.dtype))
        x, t = seg2d_pair(pre, vol, read_mask(mask_path), mask_path)
        images.append(x)
        targets.append(t)
    if len(norms) > 1:
        raise DataError(layout.root, f"the images mix 8-bit and other pixel types ({sorted(norms)}): convert them "
                                     "to one type so training and inference normalise them alike")
    pre.normalize = norms.pop() if norms else "rgb01"
    return Prepared("segmentation", np.stack(images), np.stack(targets), stems=list(stems),
                    num_classes=int(max(t.max() for t in targets)) + 1 if targets else 2,
                    preprocessing=pre.to_dict(), profiles=profiles)


def prepare_seg3d(layout: Layout, stems: list[str], size: tuple[int, int], channels: int, context: int,
                  axis: int | str = "auto", normalize: str = "zscore", cancel=None) -> Prepared:
    pre = pp.Preprocessing(input_size=tuple(size), channels=channels, normalize=normalize, layout="seg3d",
                           slice_axis=axis, context=context, extra={"label_names": layout.label_names})
    images, targets, profiles, drawn = [], [], [], []
    for s in stems:
        _check_cancel(cancel, s)
        img_path, lab_path = layout.pairs[s]
        vol, lab = io.read_nifti(img_path, kind="image"), io.read_nifti(lab_path, kind="labels")
        if np.ndim(vol.data) != 3:
            raise DataError(img_path, f"expected a 3-D volume, got shape {vol.data.shape}")
        ax, x, t = seg3d_pairs(pre, vol, np.asarray(lab.data), lab_path)
        profiles.append(input_profile(vol, ax))
        images += x
        targets += t
        if layout.contoured is not None:  # a class found in the file was drawn, listed or not
            listed = layout.contoured.get(s)
            found = {int(v) for v in np.unique(np.asarray(lab.data))} - {0}
            drawn += [None if listed is None else sorted(set(listed) | found)] * len(x)
    k = int(max(t.max() for t in targets)) + 1
    if layout.label_names:
        k = max(k, len(layout.label_names))
    present = partial_presence(drawn, k) if layout.contoured is not None else None
    return Prepared("segmentation", np.stack(images), np.stack(targets), stems=list(stems), num_classes=k,
                    preprocessing=pre.to_dict(), profiles=profiles, present=present)


def partial_presence(drawn: list, k: int) -> np.ndarray | None:
    """(N, K) bool from each sample's drawn classes (None: all): background and the drawn classes; None
    when every sample has every class (nothing partial: the plain loss)."""
    present = np.ones((len(drawn), k), bool)
    for i, classes in enumerate(drawn):
        if classes is not None:
            present[i, 1:] = False
            present[i, [c for c in classes if c < k]] = True
    return None if present.all() else present


def disc_points(path: Path, vol: io.Volume) -> io.DiscPoints:
    pts = io.read_points(path)
    if pts.affine is None:
        pts.affine, pts.shape = vol.affine, vol.data.shape[:3]
    return pts


# The sagittal slices a disc view averages, as (offset of the window from the middle slice, slices
# averaged): inference takes (0, 7), the paper's; training draws one per step (our choice: a user's scan
# is not centred on the spine to the slice, and thick-slice protocols average fewer slices of anatomy).
VIEW_CHOICES = ((0, 7), (-2, 7), (2, 7), (-1, 5), (1, 5), (0, 3), (-1, 3), (1, 3), (0, 1))


def prepare_discs(layout: Layout, stems: list[str], size: tuple[int, int], disc_numbers: list[int] | None,
                  sigma: float = 5**0.5, n_average: int = 7, cancel=None, depth: bool | None = None,
                  extrapolate: bool = False) -> Prepared:
    """One sagittal view per volume with a Gaussian heatmap per disc level. ``visible[i, k]`` is True only
    where case ``i`` *labels* level ``k``: a level a case does not label is unknown there (its disc may
    well be in the image), so it gets no target and it is left out of the prior and of every validation
    metric; the loss still counts the pixels where its disc cannot be (``known``, from the case's
    ``vertebrae/`` mask where the dataset has one: engine/disc_targets.py). Volumes with several sagittal
    slices also get a depth channel per level (``preprocessing.depth``), trained on thin views swept
    across the slices (``views``, ``depth``); ``depth`` forces them on or off (validation data follow their
    training data). ``extrapolate``: a case that labels a disc but not the one below it, where other cases
    label both, gets a target for the lower one placed from its vertebral bodies
    (disc_targets.fit_next_disc; recorded in ``preprocessing["extrapolated"]``); never ``visible``."""
    from . import disc_targets as DT

    cases = []
    for s in stems:
        _check_cancel(cancel, s)
        cases.append(_disc_case(layout, s, size, n_average, depth))
    numbers = sorted(disc_numbers or {n for c in cases for n in c["numbers"]})
    depth = all(c["n_sweep"] >= 3 for c in cases) if depth is None else bool(depth)
    n_views = max(len(c["alt"]) for c in cases)
    for c in cases:  # a thinner scan's missing sweep views: copies of its inference view (same heights)
        extra = n_views - len(c["alt"])
        c["alt"], c["centres"] = c["alt"] + [c["alt"][0]] * extra, c["centres"] + [c["centres"][0]] * extra
    def labelled_of(c):
        return {int(n): tuple(p) for n, p in zip(c["numbers"], c["rc"]) if n in numbers}

    fits = []
    if extrapolate:
        for n in numbers:
            if any(n - 1 in labelled_of(c) and n not in labelled_of(c) for c in cases):
                f = DT.fit_next_disc([(labelled_of(c), c["bodies"], c["px_mm"]) for c in cases], n)
                if f is not None:
                    fits.append(f)
    heat, vis, known, amps = [], [], [], []
    for c in cases:
        h, visible, kn, amp = _disc_case_targets(c, labelled_of(c), numbers, fits, size, sigma, depth)
        heat.append(h)
        vis.append(visible)
        known.append(kn)
        if depth:
            amps.append(amp)
    pts_all = [(c["numbers"], c["rc"]) for c in cases]
    prior = disc_prior(pts_all, numbers)
    pre = {"input_size": list(size), "channels": 3, "normalize": "zscore+minmax", "layout": "discs",
           "disc_numbers": numbers, "sigma": sigma, "n_average": n_average, "prior": prior}
    if fits:
        pre["extrapolated"] = fits
    if depth:
        pre["depth"] = {"sigma_mm": DT.DEPTH_SIGMA_MM, "slices": DT.SWEEP_SLICES, "sweep_mm": DT.SWEEP_MM}
    return Prepared("keypoints", np.stack([c["view"] for c in cases]), np.stack(heat), np.stack(vis), list(stems),
                    len(numbers) * (2 if depth else 1), pre, profiles=[c["profile"] for c in cases],
                    views=np.stack([np.stack(c["alt"] if depth else c["alt"][: len(VIEW_CHOICES)]) for c in cases]
                                   ).astype(np.float32),
                    known=np.stack(known), depth=np.stack(amps) if depth else None)


def _disc_case(layout: Layout, s: str, size: tuple[int, int], n_average: int, depth: bool | None) -> dict:
    """One case of :func:`prepare_discs`: its inference view, the other views training may draw (and the
    depth sweep's, unless ``depth`` is False), its labelled discs and vertebral bodies in view pixels."""
    from . import disc_targets as DT

    img_path, lab_path = layout.pairs[s]
    vol = io.read_nifti(img_path, kind="image")
    view, geo = pp.sagittal_view(vol.data, vol.affine, n_average)
    pts = disc_points(lab_path, vol)
    scale = disc_view_scale(view.shape, size)
    lr_mm = float(np.linalg.norm(np.asarray(vol.affine)[:3, geo["lr"]]))
    sweep = DT.sweep_offsets(vol.data.shape[geo["lr"]], lr_mm)
    # the thin views of the depth sweep only where depth channels may be trained
    choices = list(VIEW_CHOICES) + ([(o, DT.SWEEP_SLICES) for o in sweep] if depth is not False else [])
    alt, centres = [], []
    for off, n in choices:
        v, g = pp.sagittal_view(vol.data, vol.affine, n, off)
        alt.append(disc_view_input(v, size)[0])
        centres.append(g["mid"] * lr_mm)
    vert = layout.root / "vertebrae" / f"{s}_vertebrae.nii.gz"
    bodies = DT.body_centres(vert, vol, geo) * scale + (scale - 1) / 2 if vert.is_file() else np.zeros((0, 2))
    px_mm = np.array([np.linalg.norm(np.asarray(vol.affine)[:3, geo[a]]) for a in ("si", "ap")]) / scale
    return {"view": disc_view_input(view, size), "alt": alt, "centres": centres, "n_sweep": len(sweep),
            "px_mm": px_mm, "mid_mm": geo["mid"] * lr_mm, "numbers": pts.numbers, "bodies": bodies,
            "rc": pp.voxel_to_view(pts.voxels(), geo) * scale + (scale - 1) / 2,
            "lr_mm": np.asarray(pts.voxels(), float)[:, geo["lr"]] * lr_mm,
            "profile": input_profile(vol, geo["lr"])}


def _disc_case_targets(c: dict, labelled: dict, numbers: list[int], fits: list[dict], size, sigma: float,
                       depth: bool):
    """A case's heatmaps, ``visible`` levels and ``known`` pixels (with a placed target for each fitted level
    it does not label, :func:`prepare_discs`), and, with ``depth``, its depth channels appended and the
    sweep views' amplitudes (else None)."""
    from . import disc_targets as DT

    pos, visible, lr = np.zeros((len(numbers), 2)), np.zeros(len(numbers), bool), np.zeros(len(numbers))
    for n, p, d in zip(c["numbers"], c["rc"], c["lr_mm"]):
        if n in numbers:
            k = numbers.index(n)
            pos[k], visible[k], lr[k] = p, True, d
    h = pp.gaussian_heatmaps(pos, visible, size, sigma)
    kn = DT.known_masks(numbers, labelled, c["bodies"], size)
    placed = np.zeros(len(numbers), bool)
    for f in fits:
        k = numbers.index(f["level"])
        p = None if visible[k] else DT.extrapolate_next(f, labelled, c["bodies"], c["px_mm"])
        if p is not None and 0 <= p[0] < size[0] and 0 <= p[1] < size[1]:
            one = np.zeros(len(numbers), bool)
            one[k] = placed[k] = True
            h[k] = pp.gaussian_heatmaps(np.repeat(p[None], len(numbers), 0), one, size, sigma)[k]
            kn[k] = 1
    if not depth:
        return h, visible, kn, None
    amp = DT.depth_amplitudes(lr, visible, np.r_[c["mid_mm"], c["centres"]])
    h = np.concatenate([h, h * amp[0][:, None, None]])
    kn = np.concatenate([kn, kn * ~placed[:, None, None]])  # no left-right target for a placed disc
    return h, visible, kn, amp[1:]


def level_repeats(visible: np.ndarray, max_repeat: int = 4) -> np.ndarray:
    """How often each training case is drawn per epoch so that rarely labelled levels count (our choice):
    a case is repeated round(sqrt(most labelled count / count of its rarest labelled level)) times, at
    most ``max_repeat``. With spine-discs' 41 training cases, the 6 that label L5/S1 (and T10/T11) are
    drawn 3 times, the others once. ``visible``: (N, K) labelled levels. Returns (N,) ints >= 1."""
    visible = np.asarray(visible, bool)
    counts = visible.sum(0)
    if not counts.any():
        return np.ones(len(visible), int)
    top = counts.max()
    out = np.ones(len(visible), int)
    for i, row in enumerate(visible):
        if row.any():
            rarest = counts[row].min()
            out[i] = int(min(max_repeat, max(1, round(float(np.sqrt(top / rarest))))))
    return out


def disc_view_input(view: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Sagittal view -> network input as in the paper: z-score, resize, min-max to [0, 1], 3 channels.
    A view that is not square is first padded at the bottom and right to a square (with its darkest value),
    so that its pixels keep their aspect: the network learnt discs of one shape (our choice; the training
    views are square, so they are unchanged). :func:`disc_view_scale` maps positions between the two."""
    z = pp.normalize(view.astype(np.float32), "zscore")
    side = max(z.shape)
    if z.shape[0] != z.shape[1]:
        square = np.full((side, side), float(z.min()), np.float32)
        square[: z.shape[0], : z.shape[1]] = z
        z = square
    r = pp.rescale01(pp.resize(z[None], size, "bilinear").numpy())
    return np.repeat(r, 3, axis=0).astype(np.float32)


def disc_view_scale(view_shape, size: tuple[int, int]) -> np.ndarray:
    """(rows, cols) network-input pixels per sagittal-view pixel (:func:`disc_view_input`'s square padding):
    view (r, c) -> input ``(r, c) * scale + (scale - 1) / 2``, and back."""
    return np.array(size, dtype=float) / float(max(view_shape[:2]))


def disc_prior(pts_all, numbers) -> dict:
    """Mean and spread of each disc's position (in network-input pixels) over the training cases."""
    rows = {n: [] for n in numbers}
    cols = {n: [] for n in numbers}
    for nums, rc in pts_all:
        for n, (r, c) in zip(nums, rc):
            if n in rows:
                rows[n].append(r)
                cols[n].append(c)
    return {str(n): {"row": float(np.mean(rows[n])) if rows[n] else None,
                     "col": float(np.mean(cols[n])) if cols[n] else None,
                     "row_std": float(np.std(rows[n])) if len(rows[n]) > 1 else None} for n in numbers}


def prepare(layout: Layout, stems: list[str], *, size: tuple[int, int], channels: int, context: int = 0,
            disc_numbers: list[int] | None = None, axis: int | str = "auto", normalize: str | None = None,
            cancel=None, disc_depth: bool | None = None, disc_extrapolate: bool = False) -> Prepared:
    """Load, normalise and resize ``stems``; ``normalize`` overrides the 2D default (a network's own).
    ``cancel`` (a CancelToken) is checked before each case: InterruptedError when set."""
    if not stems:
        raise DataError(layout.root, "no cases to load (empty split)")
    if layout.kind == "seg2d":
        return prepare_seg2d(layout, stems, size, channels, normalize, cancel=cancel)
    if layout.kind == "seg3d":
        return prepare_seg3d(layout, stems, size, channels, context, axis, normalize=normalize or "zscore", cancel=cancel)
    return prepare_discs(layout, stems, size, disc_numbers, cancel=cancel, depth=disc_depth, extrapolate=disc_extrapolate)


def from_volumes(image: io.Volume, labels: np.ndarray, *, size: tuple[int, int], channels: int,
                 normalize: str | None = None, context: int = 0, axis: int | str = "auto") -> tuple[Prepared, int | None]:
    """One in-memory image (a 2D image or a file-order 3D volume with its affine, e.g. from a napari layer
    via :func:`napari_medseg.geometry.layer_to_volume`) and its labels (same order) -> samples prepared by
    exactly the rules of :func:`prepare_seg2d` / :func:`prepare_seg3d`. Returns (prepared, slice axis or
    None for 2D); sample ``k`` of a volume is its slice ``k`` along that axis."""
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.round(labels)):
        raise DataError(None, "labels must be whole class numbers")
    if image.is_2d:
        pre = pp.Preprocessing(input_size=tuple(size), channels=channels, normalize=normalize, layout="seg2d")
        x, t = seg2d_pair(pre, image, labels.astype(np.int64))
        pre.normalize = pre.image2d_mode(image.data.dtype)
        return Prepared("segmentation", x[None], t[None], stems=[image.name], num_classes=int(t.max()) + 1,
                        preprocessing=pre.to_dict(), profiles=[input_profile(image)]), None
    pre = pp.Preprocessing(input_size=tuple(size), channels=channels, normalize=normalize or "zscore",
                           layout="seg3d", slice_axis=axis, context=context)
    ax, x, t = seg3d_pairs(pre, image, labels)
    return Prepared("segmentation", np.stack(x), np.stack(t), stems=[f"{image.name}[{k}]" for k in range(len(x))],
                    num_classes=int(max(tt.max() for tt in t)) + 1, preprocessing=pre.to_dict(),
                    profiles=[input_profile(image, ax)]), ax


# ---------------------------------------------------------------- torch dataset with MONAI augmentation


def _invert(img):
    """x -> max + min - x: T1 against T2 and TIRM contrast, where fluid and fat swap brightness."""
    return img.max() + img.min() - img


# in words, for model cards: what each task's sample classes below do (engine/tasks.py augmentation_text)
DISC_AUGMENTATION = ("choice of sagittal slices (VIEW_CHOICES, or half the time a 3-slice view of the depth sweep), "
                     "field-of-view crops (half the samples: the top 10-45 % cut, or the bottom 10-30 %), "
                     "rotation +-15 deg, scale 0.8-1.6, bias field, gamma "
                     "0.6-1.7, histogram shift, intensity inversion, intensity scale/shift +-10 % (MONAI); no flips")
SEGMENTATION_AUGMENTATION = "flips, rotation +-15 deg, intensity scale/shift +-10 % (MONAI)"


def disc_augmentation_text(training: dict, preprocessing: dict) -> str:
    """:data:`DISC_AUGMENTATION` as a run did it (a checkpoint's ``training`` and ``preprocessing``): the
    depth-sweep views only where the model has depth channels, the magnified squares where the run drew
    them (``disc_square_crops``). For model cards."""
    text = DISC_AUGMENTATION
    if not preprocessing.get("depth"):
        text = text.replace("(VIEW_CHOICES, or half the time a 3-slice view of the depth sweep)", "(VIEW_CHOICES)")
    share = float(training.get("disc_square_crops") or 0.0)
    if share:
        text = text.replace("the top 10-45 % cut, or the bottom 10-30 %)",
                            f"the top 10-45 % cut, or the bottom 10-30 %; {share:.0%} of them instead a magnified "
                            "square around the spine with the top 20-50 % cut, 1.25-2x)")
    return text


def disc_augmentations():
    """MONAI transforms for one disc training sample (:data:`DISC_AUGMENTATION` in words). No flips:
    superior-inferior order and anterior-posterior side carry meaning. Our choice, for scans of other sites
    and contrasts (T1, T2, TIRM, Dixon water): in-plane rotation and scale (the heatmaps move with the
    image), then a bias field, gamma, a histogram shift and inversion on the one-channel view, back to
    [0, 1] as inference sees it, then small scale/shift (the field-of-view crops come first, in
    :class:`DiscSamples`: disc_targets.fov_crop); ``known`` (the pixels that count in the loss) moves with
    the targets, and what rotation or zoom brings in from outside does not count."""
    from monai.transforms import (Compose, RandAdjustContrastd, RandBiasFieldd, RandHistogramShiftd, RandLambdad,
                                  RandRotated, RandScaleIntensityd, RandShiftIntensityd, RandZoomd, ScaleIntensityd)

    return Compose([
        RandRotated(keys=["image", "target", "known"], range_x=0.26, prob=0.5,
                    mode=("bilinear", "bilinear", "nearest"), padding_mode="zeros"),
        RandZoomd(keys=["image", "target", "known"], min_zoom=0.8, max_zoom=1.6, prob=0.5,
                  mode=("bilinear", "bilinear", "nearest"), padding_mode="constant", keep_size=True),
        RandBiasFieldd(keys="image", degree=3, coeff_range=(0.0, 0.3), prob=0.3),
        RandAdjustContrastd(keys="image", gamma=(0.6, 1.7), prob=0.4),
        RandHistogramShiftd(keys="image", num_control_points=(5, 10), prob=0.3),
        RandLambdad(keys="image", func=_invert, prob=0.25),
        ScaleIntensityd(keys="image", minv=0.0, maxv=1.0),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ])


def segmentation_augmentations():
    """MONAI transforms for one segmentation training sample (:data:`SEGMENTATION_AUGMENTATION`)."""
    from monai.transforms import Compose, RandFlipd, RandRotated, RandScaleIntensityd, RandShiftIntensityd

    return Compose([
        RandFlipd(keys=["image", "target"], prob=0.5, spatial_axis=1),
        RandFlipd(keys=["image", "target"], prob=0.5, spatial_axis=0),
        RandRotated(keys=["image", "target"], range_x=0.26, prob=0.3, mode=("bilinear", "nearest"),
                    padding_mode="zeros"),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ])


class TrainDataset(torch.utils.data.Dataset):
    """Training samples with per-step augmentation (a task's subclass: :class:`SegmentationSamples`,
    :class:`DiscSamples`; ``engine/tasks.py`` ``Task.samples`` picks it). ``repeats`` (N,) draws case ``i``
    that many times per epoch (:func:`level_repeats`); ``item["index"]`` is always the case's own index."""

    def augmentations(self):
        raise NotImplementedError

    def __init__(self, data: Prepared, augment: bool = True, seed: int = 0, repeats=None, square_share: float = 0.0):
        self.data, self.augment, self.seed, self.square_share = data, augment, seed, float(square_share)
        self.transform = self.augmentations() if augment else None
        self.epoch = 0
        reps = np.ones(len(data.images), int) if repeats is None else np.asarray(repeats, int)
        if reps.shape != (len(data.images),) or reps.min() < 1:
            raise InvalidInput(f"repeats must give every one of the {len(data.images)} cases a count >= 1")
        self.order = np.repeat(np.arange(len(data.images)), reps)

    def set_epoch(self, epoch: int, worker: int = 0):
        """Reseed the augmentation so an epoch draws the same numbers whether or not training was resumed."""
        self.epoch = epoch
        if self.transform is not None:
            self.transform.set_random_state(seed=(self.seed * 1_000_003 + epoch * 1009 + worker) % (2**32))

    def __len__(self):
        return len(self.order)


class SegmentationSamples(TrainDataset):
    """Segmentation samples: the image (or 2.5-D stack) and its labels, flipped, turned and rescaled alike."""

    def augmentations(self):
        return segmentation_augmentations()

    def __getitem__(self, j):
        i = int(self.order[j])
        tgt = self.data.targets[i]
        img = np.asarray(self.data.images[i], dtype=np.float32)
        shape5 = img.shape if img.ndim == 4 else None
        if shape5 is not None:
            img = img.reshape(-1, *img.shape[-2:])
        tgt_arr = tgt[None].astype(np.float32)
        if self.transform is not None:
            out = self.transform({"image": img, "target": tgt_arr})
            img, tgt_arr = np.asarray(out["image"]), np.asarray(out["target"])
        if shape5 is not None:
            img = img.reshape(shape5)
        item = {"image": torch.as_tensor(img, dtype=torch.float32), "index": i,
                "target": torch.as_tensor(np.rint(tgt_arr[0]), dtype=torch.long)}
        if self.data.present is not None:
            item["present"] = torch.as_tensor(self.data.present[i])
        return item


class DiscSamples(TrainDataset):
    """Disc samples: a drawn sagittal view with its field of view cropped, its heatmaps and the pixels
    that count in the loss (``known``), turned, zoomed and re-contrasted alike; never flipped."""

    def augmentations(self):
        return disc_augmentations()

    def _disc_sample(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Case ``i``'s (view (1, H, W), targets (C, H, W), known (C, H, W)) for sample ``j`` of the epoch.
        Augmenting, the view is drawn (from (seed, epoch, j), so a resumed run draws the same): half the
        time one of VIEW_CHOICES, else one of the depth sweep's thin views (whose heights set the depth
        channels' targets), and its field of view is cropped (disc_targets.fov_crop)."""
        from . import disc_targets as DT

        data = self.data
        tgt = np.asarray(data.targets[i], dtype=np.float32)
        known = np.ones_like(tgt) if data.known is None else np.asarray(data.known[i], dtype=np.float32)
        if self.transform is None or data.views is None:
            return np.asarray(data.images[i][:1], dtype=np.float32), tgt, known
        rng = np.random.default_rng([self.seed, self.epoch, j])
        n_choice = min(len(VIEW_CHOICES), data.views.shape[1])
        if data.depth is not None and data.views.shape[1] > n_choice and rng.random() < 0.5:
            pick = int(rng.integers(n_choice, data.views.shape[1]))
        else:
            pick = int(rng.integers(n_choice))
        if data.depth is not None:
            k = tgt.shape[0] // 2
            tgt = np.concatenate([tgt[:k], tgt[:k] * data.depth[i, pick][:, None, None]])
        return DT.fov_crop(rng, np.asarray(data.views[i][pick][None], dtype=np.float32), tgt, known,
                           square_share=self.square_share)

    def __getitem__(self, j):
        i = int(self.order[j])
        img, tgt_arr, known = self._disc_sample(i, j)
        if self.transform is not None:
            out = self.transform({"image": img, "target": tgt_arr, "known": known})
            img, tgt_arr, known = np.asarray(out["image"]), np.asarray(out["target"]), np.asarray(out["known"])
        img = np.repeat(img, self.data.images.shape[1], axis=0)  # the network's 3 identical channels
        return {"image": torch.as_tensor(img, dtype=torch.float32), "index": i,
                "target": torch.as_tensor(tgt_arr, dtype=torch.float32),
                "visible": torch.as_tensor(self.data.visible[i]),
                "known": torch.as_tensor(known > 0.5)}


def worker_init(worker_id: int):
    info = torch.utils.data.get_worker_info()
    ds = info.dataset
    ds.set_epoch(ds.epoch, worker_id + 1)
