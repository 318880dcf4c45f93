"""Python API for scripts and napari's console: ``segment``, ``label_discs``, ``train``, ``evaluate``,
``batch``. The CLI and the widgets call the same functions.

    >>> from napari_medseg import api
    >>> seg = api.segment("ct.nii.gz", weights="runs/unet/best")      # labels + geometry
    >>> discs = api.label_discs(viewer.layers["t2"], weights="runs/hg/best")
    >>> api.batch("scans/*.nii.gz", out="results", weights="runs/unet/best")
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import geometry, io
from . import catalog
from .catalog import bundled_weights as bundled_weights  # part of the API (no torch needed to list)
from .engine import tasks
from .engine.events import CancelToken
from .io.errors import InvalidInput, MedSegIOError

if TYPE_CHECKING:  # torch is imported when a model is loaded, not by `import api`: the CLI answers a bad
    from .engine.infer import Predictor  # path or name before paying for it

ImageLike = Any  # path, numpy array, io.Volume or a napari layer (anything with .data)


@dataclass
class Segmentation:
    labels: np.ndarray
    affine: np.ndarray | None
    name: str
    class_names: list[str] = field(default_factory=list)
    probabilities: np.ndarray | None = None
    source: str | None = None
    model: dict = field(default_factory=dict)  # who made it: Predictor.identity() + the training dataset


# ---------------------------------------------------------------- weights


def list_models() -> list[dict]:
    """Networks and bundled weights, as ``napari-medseg models --json`` prints them (see
    :func:`napari_medseg.catalog.list_models`)."""
    return catalog.list_models()


def models_for(image: ImageLike, task: str = "segmentation") -> dict[str, list[str]]:
    """Bundled models of ``task`` -> why each would refuse ``image`` (an empty list: it fits), fitting ones
    first, from each model's recorded ``expects`` (``engine/expectations.py``; no network is loaded). The
    Segment widget proposes the first that fits."""
    from .engine.config import read_config
    from .engine.expectations import check, input_profile

    profile = input_profile(as_volume(image))
    out = {}
    for name, path in bundled_weights().items():
        cfg = read_config(path)
        if tasks.of(cfg["model"].get("task", "segmentation")) is tasks.of(task):
            out[name] = check(profile, cfg.get("expects"))
    return dict(sorted(out.items(), key=lambda kv: bool(kv[1])))


def load(model: str | None = None, weights: str | os.PathLike | None = None, *, device: str = "auto",
         precision: str = "auto", batch_size: int | str = "auto", runtime: str = "auto") -> Predictor:
    """A :class:`Predictor` from a checkpoint folder (``weights``) or a bundled name (``model``).
    ``batch_size``: slices per forward pass, or ``"auto"`` to fit the device's free memory. ``runtime``:
    ``"torch"``, ``"onnxruntime"`` (CPU, fp32) or ``"auto"`` (the network's measured choice,
    ``engine/runtime.py``)."""
    if weights is None and model is None:
        raise InvalidInput("give weights=<checkpoint folder> or model=<bundled weights name>")
    if weights is None:
        bundled = bundled_weights()
        if model not in bundled:
            have = ", ".join(bundled) or "none yet"
            raise InvalidInput(f"no bundled weights named {model!r} (bundled: {have}); pass a checkpoint with --weights")
        weights = bundled[model]
    from .engine.infer import Predictor

    return Predictor.from_checkpoint(weights, device=device, precision=precision, batch_size=batch_size,
                                     runtime=runtime)


def export(out: str | os.PathLike, model: str | None = None, weights=None, *, format: str = "onnx") -> dict:
    """Write the network of bundled weights (``model``) or a checkpoint (``weights``) as an ONNX graph
    (``format="onnx"``, batch size dynamic, opset ``engine.runtime.OPSET``) or a traced TorchScript file
    (``"torchscript"``) at the model's own input shape, and its card (``config.json`` of the checkpoint:
    preprocessing, classes, training, metrics) beside it as ``<out>.json``. The graph is the network
    only: inputs are preprocessed as ``engine/preprocess.py`` does (the card's ``preprocessing``), and its
    output is logits (segmentation) or heatmaps (discs). Returns ``{"file", "card", "input_shape"}``."""
    import torch

    from .engine.choices import EXPORT_FORMATS
    from .engine.runtime import export_onnx, export_torchscript

    if format not in EXPORT_FORMATS:
        raise InvalidInput(f"unknown export format {format!r}; choose from {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise InvalidInput(f"{out}: is a folder; give the file to write (e.g. {out / ('model.' + ('onnx' if format == 'onnx' else 'pt'))})")
    pred = load(model, weights, device="cpu", precision="fp32", runtime="torch")
    shape = pred.sample_shape()
    sample = torch.zeros((1, *shape))
    (export_onnx if format == "onnx" else export_torchscript)(pred.model, sample, out)
    card = out.with_name(out.name + ".json")
    config = dict(pred.config)
    config["export"] = {"format": format, "input_shape": ["batch", *shape], "weights_sha256": pred.identity()["weights_sha256"],
                        "output": tasks.of(pred).output}
    io.atomic.write_text_atomic(card, json.dumps(config, indent=1, default=str) + "\n")
    return {"file": str(out), "card": str(card), "input_shape": list(shape)}


def _predictor(model, weights, predictor, **kw) -> Predictor:
    return predictor if predictor is not None else load(model, weights, **kw)


# ---------------------------------------------------------------- inputs


def as_volume(image: ImageLike) -> io.Volume:
    """A path, :class:`io.Volume`, numpy array or napari layer -> the file-order Volume the engine sees.

    Layers (and arrays, taken as layers with an identity transform) go through
    :func:`napari_medseg.geometry.layer_to_volume`, the inverse of the reader: a layer this plugin
    opened gives back exactly the file's array and affine."""
    if isinstance(image, io.Volume):
        return image
    if isinstance(image, (str, os.PathLike)):
        vols = io.read(image)
        if len(vols) > 1:
            raise MedSegIOError(image, f"holds {len(vols)} series; pass one series folder")
        return vols[0]
    if hasattr(image, "data_to_world") and hasattr(image, "data"):  # a napari layer (duck-typed)
        return geometry.volume_of_layer(image)
    arr = np.asarray(getattr(image, "data", image))
    # an 8-bit array whose last axis has 3 or 4 entries is RGB(A), as napari guesses: one image, or a stack of them
    rgb = arr.ndim in (3, 4) and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8
    return geometry.layer_to_volume(arr, rgb=rgb, name=str(getattr(image, "name", "array")))


# ---------------------------------------------------------------- segmentation


def segment(image: ImageLike, model: str | None = None, weights=None, *, axis: int | str | None = None,
            tta: bool = False, cleanup: bool = False, probabilities: bool = False, device: str = "auto",
            predictor: Predictor | None = None, callback=None, cancel: CancelToken | None = None,
            at=None, force: bool = False, runtime: str = "auto") -> Segmentation:
    """Segment a 2D image, a 3D volume or a 4D series (frame by frame).

    Files and :class:`io.Volume` objects come back in file order with their affine; napari layers and
    arrays come back in their own order (ready for a Labels layer with the image's transform). ``at`` (a
    napari world point, e.g. ``viewer.dims.point``) segments only the slice through that point, by
    the same steps as a full run. ``axis`` overrides the slice axis recorded at training (file order).
    An input unlike the model's training data (``napari-medseg models`` shows what each expects) is refused
    with :class:`~napari_medseg.engine.expectations.InputMismatch` unless ``force=True``. ``runtime``: see
    :func:`load`."""
    pred = _predictor(model, weights, predictor, device=device, runtime=runtime)
    pred.require_segmentation()
    vol = as_volume(image)
    pred.check_input(vol, force)
    from_layer = "layer" in vol.metadata
    only = None
    if at is not None and not vol.is_2d:
        ax = pred.prep.axis_for(vol.affine, np.shape(vol.data)[:3], axis)
        k = int(np.round(geometry.file_index_of_world(at, vol)[ax]))
        if not 0 <= k < np.shape(vol.data)[ax]:
            raise InvalidInput(f"{vol.name}: the point {tuple(np.round(at, 2))} is outside the volume")
        only = [k]
    out = pred.segment(vol, axis=axis, tta=tta, cleanup=cleanup, probabilities=probabilities, callback=callback,
                       cancel=cancel, only_slices=only)
    labels, probs = out if probabilities else (out, None)
    if from_layer and not vol.is_2d:  # back to the layer's order
        labels = geometry.volume_to_layer_order(labels, vol)
        probs = None if probs is None else geometry.volume_to_layer_order(probs, vol)
    return Segmentation(labels, None if from_layer else vol.affine, vol.name, pred.class_names(), probs, vol.path,
                        {**pred.identity(), "dataset": (pred.config.get("card") or {}).get("dataset")})


def as_disc_points(points) -> io.DiscPoints:
    """Disc points from a ``DiscPoints``, a points file (``_discs.csv`` / ``.json`` / a disc-label NIfTI) or a
    napari Points layer (its own transform applied); a point needs a disc number or name."""
    if isinstance(points, io.DiscPoints):
        return points
    if isinstance(points, (str, os.PathLike)):
        return io.read_points(points)
    if hasattr(points, "data") and hasattr(points, "data_to_world"):
        return geometry.points_of_layer(points)
    raise TypeError(f"expected DiscPoints, a points file or a Points layer, got {type(points).__name__}")


def label_discs(image: ImageLike, model: str | None = None, weights=None, *, device: str = "auto",
                min_confidence: float | None = None, predictor: Predictor | None = None, force: bool = False,
                prior=None, runtime: str = "auto") -> io.DiscPoints:
    """Named intervertebral discs (SCT numbers, confidences) in voxel and RAS world coordinates (for a
    napari layer, ``napari_medseg.geometry.points_to_layer_data`` places them on it).

    ``prior``: discs a person named (see :func:`as_disc_points`), e.g. one point named "L3/L4": the
    prediction nearest to it takes its name and the others are renumbered in order, so a scan outside the
    model's training levels is named right (``engine.discs.apply_prior``). ``runtime``: see :func:`load`."""
    pred = _predictor(model, weights, predictor, device=device, runtime=runtime)
    vol = as_volume(image)
    if vol.is_2d:
        raise InvalidInput(f"{vol.name}: disc labeling needs a 3-D spine volume")
    if np.ndim(vol.data) != 3:
        raise InvalidInput(f"{vol.name}: disc labeling needs one 3-D volume, got shape {np.shape(vol.data)}")
    tasks.of(pred).require(tasks.KEYPOINTS, pred.config["model"]["name"])
    pred.check_input(vol, force)
    points = pred.label_discs(vol, min_confidence=min_confidence)
    if prior is not None:
        from .engine.discs import apply_prior

        points = apply_prior(points, as_disc_points(prior))
    if points.verdict != "ok":
        import warnings

        from .engine.discs import DiscsFlagged

        warnings.warn(f"{vol.name}: {points.verdict}", DiscsFlagged, stacklevel=2)
    return points


# ---------------------------------------------------------------- training and evaluation


def train(model: str, data: str, out: str, **options) -> dict:
    """Train a network on a dataset folder; ``options`` are :class:`TrainOptions` fields."""
    from .engine.train import TrainOptions, train as _train

    callback, cancel = options.pop("callback", None), options.pop("cancel", None)
    return _train(TrainOptions(model=model, data=data, out=out, **options), callback=callback, cancel=cancel)


def train_in_background(model: str, data: str | None, out: str, *, prepared=None, **options):
    """Start training in a separate process (what the napari Train widget uses): a crash cannot take
    the caller down and GPU memory is released when it ends. ``prepared`` may replace ``data`` with a
    (train, val, summary) tuple (see :func:`training_data_from_layers`). Returns an
    ``engine.remote.TrainingProcess``: ``poll()`` gives the event dicts, ``cancel()`` stops at the next
    step with a resumable checkpoint."""
    from .engine.remote import TrainingProcess
    from .engine.train import TrainOptions

    return TrainingProcess(TrainOptions(model=model, data=data, out=out, **options), prepared).start()


def _prepared_pair(image, labels, rules: dict, size: tuple[int, int], vol=None):
    """(volume, labels volume, Prepared, slice axis) for one image and its labels (one rule for every pair);
    ``vol``: ``as_volume(image)`` when the caller has it already."""
    from .engine import data as D

    vol = as_volume(image) if vol is None else vol
    if hasattr(labels, "data_to_world") and hasattr(image, "data_to_world"):
        lab = geometry.volume_of_labels_on(labels, image)  # also a layer made with napari's new-labels button
    else:
        lab = as_volume(labels)
    if np.shape(vol.data)[: np.ndim(lab.data)] != np.shape(lab.data) or not io.same_placement(vol.affine, lab.affine):
        raise InvalidInput(f"labels {lab.name} {np.shape(lab.data)} are not on the grid of image {vol.name} "
                         f"{np.shape(vol.data)}: draw them on the image (same shape and placement)")
    if np.ndim(vol.data) - int(vol.rgb) > 3:
        raise InvalidInput(f"{vol.name}: 4-D training data are not supported; train on one frame")
    channels = 3 if vol.rgb else 1
    prepared, ax = D.from_volumes(vol, np.asarray(lab.data), size=size, channels=channels, **rules)
    return vol, lab, prepared, ax


def _labelled(lab, ax, n: int) -> list[int]:
    """Indices of the samples that carry any label (a 2D image: its one sample if labelled)."""
    if ax is None:
        return [0] if np.asarray(lab.data).any() else []
    lab_data = np.moveaxis(np.asarray(lab.data), ax, 0)
    return [k for k in range(n) if lab_data[k].any()]


def sample_labels_on(sample_labels, image: ImageLike, axis: int | None, index: int | None) -> np.ndarray:
    """Labels of one network sample (at the input size: e.g. the Train widget's preview of validation sample
    0) placed back on ``image``: resized to its slice (nearest), put at slice ``index`` along ``axis`` (file
    order; None for a 2-D image) of an otherwise empty label volume, and returned in the image's own order
    (a napari layer's), by the steps Segment's results take (``engine.preprocess.resize``, ``geometry``)."""
    from .engine import preprocess as pp

    vol = as_volume(image)
    grid = np.shape(vol.data)[:2] if axis is None else tuple(np.delete(np.shape(vol.data)[:3], axis))
    slice_labels = pp.resize(np.asarray(sample_labels), grid, mode="nearest").numpy().astype(np.uint8)
    if axis is None:
        return slice_labels
    full = np.zeros(np.shape(vol.data)[:3], np.uint8)
    np.moveaxis(full, axis, 0)[index] = slice_labels
    return geometry.volume_to_layer_order(full, vol) if "layer" in vol.metadata else full


def training_data_from_layers(image: ImageLike, labels: ImageLike, *, input_size: int = 128,
                              val_fraction: float = 0.2, at=None, model: str | None = None, more=()):
    """(train, val, summary) for :func:`train` / :func:`train_in_background` from one image and its labels
    held in memory (napari layers, arrays, or volumes), prepared by exactly the steps a dataset folder
    and inference use (:mod:`napari_medseg.geometry`, then ``engine.data.from_volumes``), so that the
    slices the network trains on are the slices Segment, Batch and the CLI give it.

    A volume is sliced along the through-plane axis; only labelled slices train; the slice through
    ``at`` (a napari world point, e.g. ``viewer.dims.point``) and every ``1/val_fraction``-th labelled
    slice validate. A single 2D image trains and validates on itself (``summary["validation"]`` says so).
    ``more``: further ``(image, labels)`` pairs of the same kind (e.g. every image the user corrected so
    far); all their labelled samples join the training set, prepared by the same rules.
    ``model`` picks the network's own input normalisation (e.g. BCDU-Net's)."""
    from . import models
    from .engine import data as D
    from .engine.train import input_rules

    if model is not None and model not in models.REGISTRY:
        raise InvalidInput(f"unknown network {model!r}; choose from {sorted(models.REGISTRY)}")
    more = list(more)
    first = as_volume(image)
    rules = input_rules(model, "seg2d" if first.is_2d else "seg3d") if model else {"context": 0, "normalize": None}
    size = (int(input_size),) * 2
    vol, lab, prepared, ax = _prepared_pair(image, labels, rules, size, vol=first)
    n = len(prepared.images)
    preview = None
    if ax is None:
        train_idx, val_idx, validation = D.slice_split([0], 0, val_fraction, single_image=True)
    else:
        labelled = _labelled(lab, ax, n)
        if not labelled:
            raise InvalidInput(f"labels {lab.name} are empty: label at least one slice")
        cur = labelled[len(labelled) // 2]
        if at is not None:
            k = int(np.round(geometry.file_index_of_world(at, vol)[ax]))
            cur = min(max(k, 0), n - 1)
        train_idx, val_idx, validation = D.slice_split(labelled, cur, val_fraction)
        preview = cur

    train_parts = [prepared.subset(train_idx)]
    for extra_image, extra_labels in more:
        evol, elab, eprep, eax = _prepared_pair(extra_image, extra_labels, rules, size)
        if eprep.preprocessing != prepared.preprocessing:
            raise InvalidInput(f"{evol.name} is not the same kind of image as {vol.name} (prepared as "
                             f"{eprep.preprocessing}, not {prepared.preprocessing}): train on images of one kind")
        idx = _labelled(elab, eax, len(eprep.images))
        if not idx:
            raise InvalidInput(f"labels {elab.name} are empty: label it or leave it out")
        train_parts.append(eprep.subset(idx))
    train = D.Prepared.join(train_parts)
    summary = {"layout": "napari layers", "image": vol.name, "labels": lab.name, "slice_axis": ax,
               "train_samples": len(train.images), "val_samples": len(val_idx), "preview_slice": preview,
               "validation": validation, "pairs": 1 + len(more)}
    return train, prepared.subset(val_idx), summary


def evaluate(data: str, model: str | None = None, weights=None, *, json_path: str | None = None,
             subset: str = "test", max_cases: int | None = None, tta: bool = False, device: str = "auto",
             precision: str = "fp32", callback=None, split: str = "auto", runtime: str = "auto",
             fov_crops: bool = False) -> dict:
    """Score a checkpoint on a dataset folder at native resolution: ``{"cases": [...], "mean": {...},
    "split": "<which split>"}``. ``subset`` is test / val / train / all; ``split`` is ``auto`` (the
    checkpoint's own recorded split when it trained on this folder, else the folder's split.json, which
    may hold only ``test``, else a split seeded like the training), ``run`` or ``folder``. ``precision``
    defaults to fp32, as the CLI's: the same call gives the same numbers on any CPU. ``fov_crops`` (disc
    datasets): every case also cropped as other protocols show the spine (engine/evaluate.py FOV_CROPS),
    with a summary per crop (``mean["per_crop"]``)."""
    from .engine.evaluate import evaluate as _evaluate

    pred = load(model, weights, device=device, precision=precision, runtime=runtime)
    result = _evaluate(pred, data, subset=subset, max_cases=max_cases, tta=tta, callback=callback, split=split,
                       fov_crops=fov_crops)
    result["precision"], result["runtime"] = pred.precision.name, pred.runtime
    if json_path:
        io.atomic.write_text_atomic(json_path, json.dumps(result, indent=1) + "\n")
    return result


# ---------------------------------------------------------------- batch


def expand_inputs(inputs) -> list[Path]:
    """Files, folders (their images, and DICOM series folders) and glob patterns -> a sorted file list.
    A path that does not exist, a pattern that matches nothing or a folder with nothing to read is refused
    with a message that says what to give instead."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out: list[Path] = []
    for item in items:
        s = str(item)
        if any(ch in s for ch in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(s, recursive=True))]
            if not matches:
                raise InvalidInput(f"{s}: the pattern matches no file")
            out.extend(matches)
            continue
        p = Path(s)
        if not p.exists():
            raise InvalidInput(f"{s}: no such file or folder")
        if p.is_dir() and not io.folder_has_dicom(p, max_files=20):
            found = []
            for child in sorted(p.iterdir()):
                if child.is_file() and (io.is_nifti_path(child) or io.is_image2d_path(child)):
                    found.append(child)
                elif child.is_dir() and io.folder_has_dicom(child, max_files=20):
                    found.append(child)
            if not found:
                subdirs = [c.name for c in sorted(p.iterdir()) if c.is_dir()][:4]
                hint = f" (it has folders {', '.join(subdirs)}: give one of them, e.g. {p / subdirs[0]})" if subdirs else ""
                raise InvalidInput(f"{p}: no images, NIfTI volumes or DICOM series in this folder{hint}")
            out.extend(found)
        else:
            out.append(p)
    seen, unique = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def batch_manifest(out: str | os.PathLike) -> list[dict]:
    """What a batch run into ``out`` did so far: ``manifest.csv``'s latest row per input (input, outputs,
    status queued/ok/skipped/failed, reason, seconds, model, sha256), in the order the inputs first appeared;
    ``[]`` when there is none. Safe to call while the run is writing (complete lines only)."""
    from .engine.batch import latest_rows, read_manifest

    return latest_rows(read_manifest(out))


def batch(inputs, out: str | os.PathLike, model: str | None = None, weights=None, *, task: str | None = None,
          tta: bool = False, cleanup: bool = False, device: str = "auto", callback=None,
          cancel: CancelToken | None = None, force: bool = False, resume: bool = False, prefetch: int = 2,
          client=None, workers: int | None = None, prior=None, format: str | None = None,
          overwrite: bool = False, runtime: str = "auto", precision: str = "auto") -> dict:
    """Run a model over many files; a bad file is reported and skipped, the rest are written.

    Writes ``<stem>_seg.nii.gz`` (volumes, source geometry) or ``<stem>_seg.png`` (2D images), or for disc
    labeling ``<stem>_discs.csv``, ``<stem>_discs.json`` and ``<stem>_labels-disc.nii.gz``, and
    ``manifest.csv`` (one row per input as it ends). ``resume=True`` skips inputs a previous run finished
    (same checksum, outputs complete). The next ``prefetch`` inputs are read while the network runs.
    ``client`` (a ``dask.distributed.Client``) or ``workers=N`` (a local Dask cluster) spread the inputs
    over processes or machines (see ``engine/batch.py``); under torchrun the files are split across ranks.
    ``prior`` (disc labeling of one scan): discs a person named, see :func:`label_discs`.
    ``format``: ``"dicom-seg"`` writes ``<stem>_seg.dcm`` (a DICOM SEG referencing each input series)
    instead of NIfTI, ``"dicom-sr"`` writes ``<stem>_discs.dcm`` (a DICOM SR) instead of the points files;
    inputs that are not DICOM series are then skipped with the reason. A folder holding an earlier run
    (its ``manifest.csv``) is refused unless ``resume`` or ``overwrite`` is given. ``runtime`` and
    ``precision`` as in :func:`load` (``"fp32"`` gives the same labels on every CPU; ``"auto"`` is bf16 where
    the hardware has it).
    Returns ``{"written": [...], "skipped": [...], "results": [...], "n_inputs": N, "manifest": path,
    "device", "runtime", "precision"}`` (what this process ran with)."""
    files = expand_inputs(inputs)  # a bad path is answered before the model (and torch) is loaded
    # so are the model's name, its task and an output folder that would lose something (engine/config.py
    # reads the card without torch)
    from .engine.batch import check_output_folder, run_batch
    from .engine.config import read_config

    if weights is None and (model is None or model not in bundled_weights()):
        load(model)  # the one message for a missing or unknown name
    card = read_config(bundled_weights()[model] if weights is None else weights)
    model_task = (card.get("model") or {}).get("task", "segmentation")
    if task is not None:
        tasks.of(model_task).require(task, card["model"]["name"])
    task = task or model_task
    check_output_folder(Path(out), files, task, format, resume=resume, overwrite=overwrite)
    pred = load(model, weights, device=device, runtime=runtime, precision=precision)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    files = files[rank::world]
    path = str(bundled_weights()[model]) if weights is None else str(weights)
    summary = run_batch(pred, files, Path(out), weights=path, task=task, tta=tta, cleanup=cleanup, force=force,
                        resume=resume, prefetch=prefetch, client=client, workers=workers, device=str(pred.device),
                        callback=callback, cancel=cancel, prior=None if prior is None else as_disc_points(prior),
                        fmt=format, overwrite=overwrite, precision=precision)
    return {**summary, "device": str(pred.device), "runtime": pred.runtime, "precision": pred.precision.name}
