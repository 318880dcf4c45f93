"""What a task is to the engine: segmentation (class logits -> labels) and disc keypoints (heatmaps -> named
points). Configs, cards and ``models.ModelInfo.task`` store the task's name; the engine asks the object
(:func:`of`) instead of testing the name, so that what differs between the tasks lives here, one rule in one
place: the losses a task trains with and its default, the criterion and how a batch feeds it, the training
loop's validation metric and "best" score, the output activation, the output formats of a batch run and the
file names each format writes, what training data it needs, and how it is said to users.

A new task is a new :class:`Task` subclass in :data:`TASKS` (and its data preparation, ``engine/data.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.errors import InvalidInput
from .choices import SEGMENTATION_LOSSES


@dataclass(frozen=True)
class Task:
    name: str  # as configs, cards and ModelInfo store it
    title: str  # as users are told: "segmentation", "disc labeling"
    output: str  # what the network returns: "logits" or "heatmaps" (an exported graph's card says it)
    losses: tuple[str, ...]  # the losses it trains with (engine/losses.py)
    default_loss: str
    formats: tuple[str, ...]  # batch output formats, the default first
    metric: str  # the validation metric the training loop keeps the best checkpoint by
    higher_is_better: bool
    needs: str  # the training data it needs, in words
    levels: bool  # its channels are levels of a chain, whose rare ones training may draw more often
    does: str  # what a checkpoint of it does, and the command for it: "labels intervertebral discs: use ..."
    trains_on_layers: bool  # can the Train widget train it on napari layers (else: a dataset folder only)

    def channels_of(self, target) -> int:
        """Output channels for training targets ``target`` (a batch): classes or heatmap channels."""
        raise NotImplementedError

    # ------------------------------------------------------------ training

    def loss(self, requested: str | None, recipe: dict) -> str:
        """The loss a run uses: the one asked for, else the recipe's when this task trains with it, else the
        task's default (a keypoint recipe lent to a segmentation network gets the segmentation default)."""
        if requested:
            return requested
        lent = recipe.get("loss")
        return lent if lent in self.losses else self.default_loss

    def check_loss(self, name: str) -> None:
        if name not in self.losses:
            other = next((t for t in TASKS.values() if name in t.losses), None)
            said = f"'{name}' is the {other.title} loss" if other else f"unknown {self.title} loss {name!r}"
            raise InvalidInput(f"{said}: {self.title} trains with {', '.join(self.losses)}")

    def criterion(self, name: str):
        """The loss module called ``name`` (a clear error when it does not go with this task)."""
        raise NotImplementedError

    def batch_loss(self, criterion, outputs, batch: dict, device, dtype=None):
        """``criterion`` on a training batch (its targets and masks moved to ``device``)."""
        raise NotImplementedError

    def score(self, metrics: dict) -> float:
        """The training loop's score of an epoch's validation metrics: higher is better."""
        value = float(metrics[self.metric])
        return value if self.higher_is_better else -value

    def check_data(self, network: str, data_task: str) -> None:
        """Refuse training data prepared for another task."""
        if data_task != self.name:
            raise InvalidInput(f"{network} does {self.title}: it needs {self.needs}")

    def validation(self) -> "Validation":
        """An accumulator of this task's validation metric over batches (``engine/train.py`` ``validate``)."""
        raise NotImplementedError

    def samples(self, data, **kw):
        """The training samples of prepared ``data`` with this task's augmentation (``engine/data.py``:
        ``augment``, ``seed``, ``repeats``, ``square_share``)."""
        raise NotImplementedError

    def example_batch(self, info, root, n: int, input_size: int, dataset: str | None = None,
                      disc_numbers: list | None = None) -> dict:
        """``n`` real training samples for network ``info`` from the folder ``root`` laid out like the
        project's data (the gradient-fidelity check, ``engine/fidelity.py``)."""
        raise NotImplementedError

    def augmentation_text(self, training: dict, preprocessing: dict) -> str:
        """What a run's augmentation did, in words, for its model card (a checkpoint's ``training`` and
        ``preprocessing``)."""
        if not training.get("augment", True):
            return "none"
        return self._augmentation_text(training, preprocessing)

    def _augmentation_text(self, training: dict, preprocessing: dict) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------ inference

    def require(self, wanted: "Task | str", model: str) -> None:
        """Refuse a checkpoint of this task where ``wanted`` is needed, saying what it does instead."""
        if of(wanted) is not self:
            raise InvalidInput(f"this checkpoint ({model}) {self.does}")

    def activate(self, out):
        """Network output -> what inference averages and decodes."""
        raise NotImplementedError

    def check_format(self, fmt: str) -> None:
        if fmt not in self.formats:
            raise InvalidInput(f"output format {fmt!r} is not one of {', '.join(self.formats)} for {self.title}")

    def output_names(self, stem: str, fmt: str | None, two_d: bool) -> list[str]:
        """The files one input writes in a batch run (the one naming rule of ``batch.run_one`` and the
        output-folder check)."""
        raise NotImplementedError

    def write_result(self, pred, path, vol, out, names_out: list[str], fmt: str, *, tta=False, cleanup=False,
                     prior=None) -> dict:
        """Predict on ``vol`` (checked) and write ``names_out`` into ``out`` in format ``fmt``: the result
        row of a batch run (outputs and what a person reads first)."""
        raise NotImplementedError


class Validation:
    """Validation metric and loss over batches: ``add`` each batch, then ``metrics``."""

    def __init__(self, metric: str):
        self.metric, self.values, self.loss_sum, self.n, self.preview = metric, [], 0.0, 0, None

    def metrics(self, with_loss: bool) -> dict:
        out = {self.metric: self._value()}
        if with_loss:
            out["val_loss"] = self.loss_sum / max(1, self.n)
        return out

    def _value(self) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class Segmentation(Task):
    def channels_of(self, target) -> int:
        return max(2, int(target.max()) + 1)

    def criterion(self, name: str):
        from .losses import SegmentationLoss

        self.check_loss(name)
        return SegmentationLoss(name)

    def batch_loss(self, criterion, outputs, batch, device, dtype=None):
        y = batch["target"].to(device)
        if "present" in batch:  # partial labels: each sample's drawn classes
            return criterion(outputs, y, batch["present"].to(device))
        return criterion(outputs, y)

    def validation(self):
        return _SegmentationValidation(self.metric)

    def samples(self, data, **kw):
        from .data import SegmentationSamples

        return SegmentationSamples(data, **kw)

    def _augmentation_text(self, training, preprocessing):
        from .data import SEGMENTATION_AUGMENTATION

        return SEGMENTATION_AUGMENTATION

    def example_batch(self, info, root, n, input_size, dataset=None, disc_numbers=None):
        """Kvasir-SEG for 2-D networks, ACDC for LSTMSA (2.5-D stacks from the middle of the first volume), or
        ``dataset`` (2-D images, or the middle slices of a volume)."""
        import torch

        from . import data as D

        layout = D.discover(root / (dataset or ("acdc" if info.input == "2d+2.5d" else "kvasir-seg")))
        if layout.kind == "seg3d":  # slices (2.5D stacks for LSTMSA) from the middle of a volume
            context = 1 if info.input == "2d+2.5d" else 0
            stems = D.split(layout)["train"]
            for k in range(1, len(stems) + 1):  # the first volume, or as many as give n slices
                prep = D.prepare(layout, stems[:k], size=(input_size, input_size), channels=1, context=context)
                if len(prep.images) >= n:
                    break
            mid = len(prep.images) // 2
            idx = np.arange(mid - n // 2, mid - n // 2 + n)
            return {"image": torch.as_tensor(prep.images[idx]), "target": torch.as_tensor(prep.targets[idx])}
        prep = D.prepare(layout, D.split(layout)["train"][:n], size=(input_size, input_size), channels=3,
                         normalize=info.input_norm)
        return {"image": torch.as_tensor(prep.images), "target": torch.as_tensor(prep.targets)}

    def activate(self, out):
        import torch

        return torch.softmax(out.float(), dim=1)

    def output_names(self, stem, fmt, two_d):
        fmt = fmt or self.formats[0]
        if two_d:
            return [f"{stem}_seg.png"]
        return [f"{stem}_seg.dcm"] if fmt == "dicom-seg" else [f"{stem}_seg.nii.gz"]


    def write_result(self, pred, path, vol, out, names_out, fmt, *, tta=False, cleanup=False, prior=None):
        from .. import io
        from ..io.errors import MedSegIOError
        from .metrics import class_counts

        names = pred.class_names()
        if vol.is_2d:
            if fmt == "dicom-seg":
                raise MedSegIOError(path, "--format dicom-seg needs a 3-D DICOM series; this is a 2-D image")
            labels = pred.segment(vol, tta=tta, cleanup=cleanup)
            target = io.write_image2d(out / names_out[0], labels)
            voxel = 1.0
        else:
            labels = pred.segment(vol, tta=tta, cleanup=cleanup)
            if fmt == "dicom-seg":
                from ..io.dicom_seg import write_seg

                target, _notes = write_seg(out / names_out[0], labels, vol, class_names=names,
                                           dataset=(pred.config.get("card") or {}).get("dataset"),
                                           algorithm=pred.identity())
            else:
                target = io.write_nifti(out / names_out[0], labels, reference=vol, kind="labels")
            voxel = float(np.prod(vol.spacing))
        counts = class_counts(labels, pred.num_classes)
        unit = "px" if vol.is_2d else "mm3"
        return {"outputs": [str(target)],
                "volumes": {f"{names[c]}_{unit}": float(counts[c] * voxel) for c in range(1, pred.num_classes)}}


class _SegmentationValidation(Validation):
    def add(self, out, val, sl: slice, device, criterion=None) -> None:
        import torch

        from .losses import soft_dice

        y = torch.as_tensor(val.targets[sl], device=device)
        present = None if val.present is None else torch.as_tensor(val.present[sl], device=device)
        self.values.append(soft_dice(out, y, present).cpu())
        if criterion is not None:
            self.loss_sum += float(criterion(out, y, present)) * len(out)
        if self.preview is None:
            self.preview = out[0].argmax(0).cpu().numpy().astype(np.uint8)
        self.n += len(out)

    def _value(self) -> float:
        import torch

        return float(torch.cat(self.values).nanmean())


@dataclass(frozen=True)
class Keypoints(Task):
    def channels_of(self, target) -> int:
        return int(target.shape[1])

    def criterion(self, name: str):
        from .losses import HeatmapLoss

        self.check_loss(name)
        return HeatmapLoss()

    def batch_loss(self, criterion, outputs, batch, device, dtype=None):
        y = batch["target"].to(device) if dtype is None else batch["target"].to(device, dtype)
        return criterion(outputs, y, batch.get("known", batch["visible"]).to(device))

    def validation(self):
        return _KeypointValidation(self.metric)

    def samples(self, data, **kw):
        from .data import DiscSamples

        return DiscSamples(data, **kw)

    def _augmentation_text(self, training, preprocessing):
        from .data import disc_augmentation_text

        return disc_augmentation_text(training, preprocessing)

    def example_batch(self, info, root, n, input_size, dataset=None, disc_numbers=None):
        """The lumbar disc set's first ``n`` training cases."""
        import torch

        from . import data as D

        layout = D.discover(root / (dataset or "spine-discs"))
        stems = D.split(layout)["train"][:n]
        prep = D.prepare(layout, stems, size=(input_size, input_size), channels=3, disc_numbers=disc_numbers)
        return {"image": torch.as_tensor(prep.images), "target": torch.as_tensor(prep.targets),
                "visible": torch.as_tensor(prep.visible)}

    def activate(self, out):
        return out.float()

    def output_names(self, stem, fmt, two_d):
        fmt = fmt or self.formats[0]
        return [f"{stem}_discs.dcm"] if fmt == "dicom-sr" else \
            [f"{stem}_discs.csv", f"{stem}_discs.json", f"{stem}_labels-disc.nii.gz"]


    def write_result(self, pred, path, vol, out, names_out, fmt, *, tta=False, cleanup=False, prior=None):
        from .. import io

        points = pred.label_discs(vol)
        if prior is not None:
            from .discs import apply_prior

            points = apply_prior(points, prior)
        if fmt == "dicom-sr":
            outs = [io.write_points(out / names_out[0], points, reference=vol, algorithm=pred.identity())]
        else:
            outs = [io.write_points(out / names_out[0], points), io.write_points(out / names_out[1], points),
                    io.write_points(out / names_out[2], points, reference=vol)]
        return {"outputs": [str(p) for p in outs], "discs": len(points), "names": [d.name for d in points.discs],
                "verdict": points.verdict}


class _KeypointValidation(Validation):
    def add(self, out, val, sl: slice, device, criterion=None) -> None:
        import torch

        from .losses import mean_peak_error

        y = torch.as_tensor(val.targets[sl], device=device)
        vis = torch.as_tensor(val.visible[sl], device=device)
        self.values.append(mean_peak_error(out, y, vis))
        if criterion is not None:
            known = vis if val.known is None else torch.as_tensor(val.known[sl], device=device)
            self.loss_sum += float(criterion(out, y, known)) * len(out)
        if self.preview is None:
            self.preview = out[0, : val.visible.shape[1]].max(0).values.cpu().numpy()
        self.n += len(out)

    def _value(self) -> float:
        return float(np.nanmean(self.values))


SEGMENTATION = Segmentation("segmentation", "segmentation", "logits", SEGMENTATION_LOSSES, "dice_ce",
                            ("nifti", "dicom-seg"), "dice", True, "images/ + masks/ or imagesTr/ + labelsTr/", False,
                            "segments, it does not label discs: use predict (napari-medseg predict / api.segment)",
                            True)
KEYPOINTS = Keypoints("keypoints", "disc labeling", "heatmaps", ("heatmap_mse",), "heatmap_mse", ("files", "dicom-sr"),
                      "l2_px", False, "a disc dataset (images/ + labels/)", True,
                      "labels intervertebral discs, it does not segment: use label-discs (napari-medseg label-discs / "
                      "api.label_discs)", False)
TASKS = {t.name: t for t in (SEGMENTATION, KEYPOINTS)}


def of(what) -> Task:
    """The task of a name, or of anything with a ``task`` (a ``models.ModelInfo``, a ``Predictor``, a
    ``data.Prepared``)."""
    if isinstance(what, Task):
        return what
    name = what if isinstance(what, str) else getattr(what, "task", None)
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise InvalidInput(f"unknown task {name!r}; one of {', '.join(TASKS)}")
    return TASKS[name]
