"""Training: per-network recipes, validation every epoch, best/last checkpoints, early stopping,
exact ``resume``, cancellation, mixed precision, optional ``torch.compile`` and DDP under torchrun."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..io.errors import InvalidInput
from .. import models
from . import checkpoint as ckpt
from . import data as D
from . import preprocess as pp
from .choices import SCHEDULES
from .devices import select_device, select_precision
from .disc_targets import channel_keys
from .expectations import summarise
from .events import CancelToken, Epoch, Finished, Note, Preview, Started, Step
from . import tasks


@dataclass
class TrainOptions:
    model: str
    out: str
    data: str | None = None
    size: str = "small"
    epochs: int | None = None  # default: the recipe's, else 50
    batch_size: int | None = None  # default: the recipe's
    lr: float | None = None  # default: the recipe's
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    seed: int = 0
    resume: bool = False
    overwrite: bool = False  # replace a run already in ``out`` (otherwise refused unless ``resume``)
    input_size: int | None = None  # default: the recipe's
    patience: int | None = None  # early stopping after this many epochs without improvement
    num_workers: int = 0
    compile: bool = False
    augment: bool | None = None  # default: the recipe's (the bilateral paper trains without), else True
    # disc labeling: draw cases that label rarely labelled levels (L5/S1 ...) more often (data.level_repeats);
    # default: the recipe's (on for the hourglass)
    balance_levels: bool | None = None
    # disc labeling: a depth channel per level for the discs' left-right position (engine/disc_targets.py);
    # default: on for volumes of several sagittal slices
    disc_depth: bool | None = None
    # disc labeling: targets for the unlabelled disc below a case's labelled chain, placed from its vertebral
    # bodies as the cases that label it show (L5/S1 in the cases that stop at L4/L5; engine/disc_targets.py)
    disc_extrapolate: bool = False
    # disc labeling: this share of the field-of-view crops is a magnified square around the spine with the top
    # cut (disc_targets.square_crop), as evaluate.FOV_CROPS' squares; 0: none
    disc_square_crops: float = 0.0
    # volumes: a fixed intensity window (lo, hi), clipped and mapped to [0, 1] instead of each volume's
    # z-score (CT in Hounsfield units; recorded as preprocessing.normalize "window:LO:HI" and replayed)
    hu_window: tuple[float, float] | None = None
    # volumes with dataset.json "contoured": leave each case's undrawn organs out of the loss (True), or treat
    # them as background (False: the baseline a partial-label comparison needs)
    partial_labels: bool = True
    loss: str | None = None  # dice_ce | ce | bce | heatmap_mse; default: the recipe's
    schedule: str | None = None  # learning-rate schedule (SCHEDULES); default: the recipe's
    recipe: str | None = None  # train with another network's recipe (for baselines)
    max_steps_per_epoch: int | None = None
    max_cases: int | None = None  # use only the first N train / val cases (smoke tests)
    slice_axis: int | str = "auto"
    extra_train: list[str] = field(default_factory=list)  # more folders whose `train` split joins training
    model_options: dict = field(default_factory=dict)
    preview_every: int = 1
    # fine-tuning: start from bundled weights (a name) or a checkpoint folder of the same network and size;
    # a different number of classes re-initialises the head. ``freeze="encoder"`` keeps the encoder fixed.
    init: str | None = None
    freeze: str | None = None
    # "auto": the network's measured choice (models.REGISTRY[...].memory_format), "channels_last" or "contiguous"
    memory_format: str = "auto"


def _dist():
    """(rank, world_size); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _recipe(opts: TrainOptions) -> dict:
    name = opts.recipe or opts.model
    if name not in models.REGISTRY:
        raise InvalidInput(f"unknown recipe {name!r}; choose from {sorted(models.REGISTRY)}")
    return dict(models.REGISTRY[name].recipe)


def resolve(opts: TrainOptions) -> dict:
    """What this run really does, after the recipe's defaults: loss, augmentation, epochs, schedule,
    optimizer, batch size, learning rate, input size. Recorded in the checkpoint config."""
    info = models.REGISTRY[opts.model]
    recipe = _recipe(opts)
    task = tasks.of(info)
    loss = task.loss(opts.loss, recipe)
    # fine-tuning (``init``): 1e-4, or the recipe's rate when lower, and a short schedule unless given
    finetune = bool(opts.init)
    lr = float(opts.lr or (min(recipe.get("lr", 1e-3), FINETUNE_LR) if finetune else recipe.get("lr", 1e-3)))
    epochs = int(opts.epochs or (FINETUNE_EPOCHS if finetune else recipe.get("epochs", 50)))
    schedule = opts.schedule or recipe.get("schedule") or ("milestones" if "milestones" in recipe else "constant")
    if schedule not in SCHEDULES:
        raise InvalidInput(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if schedule == "milestones" and "milestones" not in recipe:
        raise InvalidInput(f"the {opts.recipe or opts.model} recipe has no milestones; choose another schedule")
    return {"loss": loss, "augment": recipe.get("augment", True) if opts.augment is None else bool(opts.augment),
            "epochs": epochs, "schedule": schedule,
            "optimizer": recipe.get("optimizer", "adam"), "batch_size": int(opts.batch_size or recipe.get("batch_size", 8)),
            "lr": lr, "input_size": int(opts.input_size or recipe.get("input_size", 256)),
            "weight_decay": recipe.get("weight_decay", 0.0), "finetune": finetune,
            "balance_levels": bool(task.levels and (
                recipe.get("balance_levels", False) if opts.balance_levels is None else opts.balance_levels))}


# our choice, measured (benchmarks/finetune.py, ISIC 2016 crops from unet-ph2): 1e-4 beat a tenth of the
# recipe's rate (1e-5 there) at 25 images (Dice 0.843 vs 0.817) and 200 images (0.857 vs 0.842)
FINETUNE_LR = 1e-4
FINETUNE_EPOCHS = 20


def choose_memory_format(network: str, size: str, device: torch.device, compile: bool = False,
                         requested: str = "auto") -> str:
    """``channels_last`` or ``contiguous`` for training ``network`` at ``size`` on ``device``.

    "auto" takes the network's measured choice (``models.REGISTRY[network].memory_format``, from
    ``benchmarks/engine.py --memory-format``); MPS and ``torch.compile`` (2.13 mis-traces some padding
    backward ops with channels_last) always train contiguous."""
    if requested not in ("auto", "channels_last", "contiguous"):
        raise InvalidInput(f"memory_format must be 'auto', 'channels_last' or 'contiguous', not {requested!r}")
    if device.type == "mps" or compile:
        return "contiguous"
    if requested != "auto":
        return requested
    return models.REGISTRY[network].memory_format.get(size, "channels_last")


def train_step(net, *, batch: dict, criterion, optimizer, scaler, precision, task: str, device: torch.device,
               channels_last: bool, where: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """One optimisation step exactly as the trainer takes it: input layout, autocast forward, loss (checked
    finite), zero_grad, (scaled) backward, optimizer step. Returns the loss. ``benchmarks/engine.py`` times
    this function against a bare forward + backward + optimizer step of the same network."""
    x = batch["image"].to(device)
    if x.ndim == 4 and channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with precision.autocast():
        outputs = net(x)
    loss = tasks.of(task).batch_loss(criterion, outputs, batch, device)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at epoch {where[0]} step {where[1]}; "
                                 "try a lower --lr or --precision fp32")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def build_optimizer(model, recipe: dict, lr: float):
    params = [p for p in model.parameters() if p.requires_grad]  # frozen layers stay as loaded
    if recipe.get("optimizer") == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, weight_decay=recipe.get("weight_decay", 0.0))


# learning-rate schedules (choices.SCHEDULES), stepped once per epoch: constant; poly0.9 (LSTMSA's paper);
# plateau0.1p7 (the BCDU-Net reference); milestones (the hourglass paper's x0.1 steps, scaled to the run's
# length); cosine: from the recipe's rate to 1 % of it over the run (SGDR without restarts) **(our choice)**,
# for comparisons that must not depend on a validation-driven rule (a plateau on 15 validation images stalls)


def build_scheduler(optimizer, recipe: dict, epochs: int, schedule: str):
    """The scheduler for ``schedule`` (:data:`SCHEDULES`, as resolved by :func:`resolve`); None: constant."""
    if schedule == "poly0.9":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max(1, epochs), power=0.9)
    if schedule == "cosine":
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=0.01 * lr)
    if schedule == "plateau0.1p7":  # BCDU-Net's Keras reference: ReduceLROnPlateau(val_loss, 0.1, 7, epsilon=1e-4)
        # Keras reduces after `patience` bad epochs, torch after `patience + 1`: 6 here is Keras' 7
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=6,
                                                          threshold=1e-4, threshold_mode="abs")
    if schedule == "milestones":  # the paper's epochs 60 and 90 of 120, scaled to this run's length
        total = recipe.get("epochs", 120)
        ms = sorted({max(1, round(m * epochs / total)) for m in recipe["milestones"]})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=ms, gamma=recipe.get("gamma", 0.1))
    return None


def _channels_for(layout: D.Layout) -> int:
    if layout.kind == "seg2d":
        first = next(iter(layout.pairs.values()))[0]
        from .. import io

        return 3 if io.read_image2d(first).rgb else 1
    return 1 if layout.kind == "seg3d" else 3


def input_rules(model: str, kind: str) -> dict:
    """The per-network data rules, in one place for folders and napari layers: a 2.5D network
    (``ModelInfo.input == "2d+2.5d"``, LSTMSA) reads stacks of one neighbouring slice each side from volumes;
    a network may ask for its own 2D normalisation."""
    return {"context": 1 if (models.REGISTRY[model].input == "2d+2.5d" and kind == "seg3d") else 0,
            "normalize": models.REGISTRY[model].input_norm if kind == "seg2d" else None}


def prepare_data(opts: TrainOptions, size: tuple[int, int], cancel: CancelToken | None = None):
    layout = D.discover(opts.data)
    if not opts.partial_labels and layout.contoured is not None:
        layout.contoured = None  # every undrawn organ counts as background (the ablation)
    parts = D.split(layout, seed=opts.seed)
    if not parts["train"]:
        raise D.DataError(layout.root, "the split has an empty 'train' list: nothing to train on")
    train_stems, val_stems = parts["train"], parts["val"]
    validation = "the 'val' split"
    if not val_stems:
        val_stems = parts["train"][:1]
        validation = f"training case {val_stems[0]} (the split has no 'val' cases): validation scores are optimistic"
        warnings.warn(f"{layout.root}: no validation cases; validating on {validation}", stacklevel=2)
    if opts.max_cases:
        train_stems, val_stems = train_stems[: opts.max_cases], val_stems[: max(1, opts.max_cases // 2)]
    channels = _channels_for(layout)
    rules = input_rules(opts.model, layout.kind)
    context, norm = rules["context"], rules["normalize"]
    if opts.hu_window is not None:
        if layout.kind != "seg3d":
            raise InvalidInput(f"--hu-window is for volumes (CT); {opts.data} holds {layout.kind} data")
        norm = pp.window_mode(*opts.hu_window)
    train = D.prepare(layout, train_stems, size=size, channels=channels, context=context, axis=opts.slice_axis,
                      normalize=norm, cancel=cancel, disc_depth=opts.disc_depth, disc_extrapolate=opts.disc_extrapolate)
    numbers = train.preprocessing.get("disc_numbers")
    val = D.prepare(layout, val_stems, size=size, channels=channels, context=context, disc_numbers=numbers,
                    axis=opts.slice_axis, normalize=norm, cancel=cancel,
                    disc_depth=bool(train.preprocessing.get("depth")) if numbers else None)
    extra_cases = 0
    for folder in opts.extra_train:
        other = D.discover(folder)
        if other.kind != layout.kind or layout.kind == "discs":
            raise InvalidInput(f"{folder}: extra training data must be a {layout.kind} segmentation folder like "
                             f"{opts.data} (got {other.kind})")
        stems = D.split(other, seed=opts.seed)["train"]
        more = D.prepare(other, stems, size=size, channels=channels, context=context, axis=opts.slice_axis,
                         normalize=norm, cancel=cancel)
        if more.images.shape[1:] != train.images.shape[1:]:
            raise InvalidInput(f"{folder}: images have shape {more.images.shape[1:]} after preparation, "
                             f"{opts.data} has {train.images.shape[1:]} (channels differ?)")
        train = D.Prepared.join([train, more], prefixes=[None, Path(folder).name])
        extra_cases += len(stems)
    val.num_classes = train.num_classes = max(train.num_classes, val.num_classes)
    summary = {"root": str(Path(opts.data).resolve()), "layout": layout.kind, "train_cases": len(train_stems),
               "extra_train": [str(Path(f).resolve()) for f in opts.extra_train], "extra_train_cases": extra_cases,
               "val_cases": len(val_stems), "train_samples": len(train.images), "val_samples": len(val.images),
               "split": "split.json" if (layout.root / "split.json").is_file() else f"seeded({opts.seed})",
               "validation": validation,
               # the exact cases, so that evaluate scores this run's own test split (docs/engine.md, "Evaluation")
               "split_stems": {"train": list(train_stems), "val": list(val_stems), "test": list(parts["test"])}}
    return train, val, summary


@dataclass
class Run:
    """What one training run holds between its stages (:func:`train` reads as the list of them)."""

    opts: TrainOptions
    info: models.ModelInfo
    recipe: dict
    plan: dict  # resolve(opts): loss, epochs, schedule, batch size, lr ...
    rank: int
    world: int
    emit: Callable
    cancel: CancelToken
    out: Path
    train_data: D.Prepared
    val_data: D.Prepared
    summary: dict
    device: torch.device
    precision: Any
    model: torch.nn.Module | None = None  # the network (wrapped in DDP under torchrun)
    train_model: torch.nn.Module | None = None  # what the steps call: the model, or its torch.compile
    compiled_ok: bool = False
    frozen: list = field(default_factory=list)
    init_info: dict | None = None
    channels_last: bool = False
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    criterion: Any = None
    config: dict = field(default_factory=dict)
    state: dict = field(default_factory=lambda: {"epoch": 0, "best": -math.inf, "bad_epochs": 0, "history": []})
    dataset: Any = None
    sampler: Any = None
    batch_size: int = 1
    steps_per_epoch: int = 0
    t_start: float = 0.0
    steps_done: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def train(opts: TrainOptions, callback=None, cancel: CancelToken | None = None, data=None) -> dict:
    """Train ``opts.model``; ``data`` may be a (train, val, summary) tuple of :class:`Prepared` arrays
    instead of ``opts.data``. Returns a summary with the checkpoint paths and the history.

    The stages: set up (data, device, precision), build the network (fine-tuning, freezing, layout), the
    optimiser and the checkpoint config, resume, the sampler and loader rules (DDP and torch.compile as
    wrappers), then per epoch: one epoch of steps, validation, the epoch's record and checkpoints."""
    run = set_up(opts, callback, cancel or CancelToken(), data)
    if run is None:  # cancelled while the data were prepared: nothing trained, nothing to keep
        return _cancelled_before_start(opts)
    build_network(run)
    build_optimisation(run)
    run.config = checkpoint_config(run)
    resume_run(run)
    prepare_sampling(run)
    start(run)
    reason = "done"
    while run.state["epoch"] < run.plan["epochs"]:
        epoch, t_epoch = run.state["epoch"], time.perf_counter()
        lr_epoch = run.optimizer.param_groups[0]["lr"]  # the rate this epoch trains with (history's "lr")
        done = one_epoch(run, epoch)
        metrics, preview = (None, None) if done is None else validate(
            run.model, run.val_data, run.info.task, run.device, run.precision, run.batch_size, run.criterion,
            run.cancel)
        if metrics is None:  # cancelled in the epoch or its validation: the epoch is redone on --resume
            reason = "cancelled"
            save(run, "last", with_state=True)
            break
        end_epoch(run, epoch, done, metrics, preview, lr_epoch, time.perf_counter() - t_epoch)
        if run.opts.patience is not None and run.state["bad_epochs"] >= run.opts.patience:
            reason = "early_stop"
            break
    return finish(run, reason)


def set_up(opts: TrainOptions, callback, cancel: CancelToken, data) -> Run | None:
    """The run's plan, folder, data, device and precision; None when cancelled while preparing data."""
    rank, world = _dist()
    emit = (callback or (lambda e: None)) if rank == 0 else (lambda e: None)
    info = models.REGISTRY.get(opts.model)
    if info is None:
        raise InvalidInput(f"unknown network {opts.model!r}; choose from {sorted(models.REGISTRY)}")
    recipe, plan = _recipe(opts), resolve(opts)
    if rank == 0:
        _claim_run_folder(Path(opts.out), resume=opts.resume, overwrite=opts.overwrite)
    size = plan["input_size"]
    if size % info.multiple:
        raise InvalidInput(f"input size {size} must be a multiple of {info.multiple} for {opts.model}")
    try:
        train_data, val_data, summary = data if data is not None else prepare_data(opts, (size, size), cancel)
    except InterruptedError:
        emit(Finished(reason="cancelled", epoch=0, best_metric=None, checkpoint=""))
        return None
    tasks.of(info).check_data(opts.model, train_data.task)
    device = select_device(opts.device)
    return Run(opts=opts, info=info, recipe=recipe, plan=plan, rank=rank, world=world, emit=emit, cancel=cancel,
               out=Path(opts.out), train_data=train_data, val_data=val_data, summary=summary, device=device,
               precision=select_precision(device, opts.precision, network=opts.model))


def _cancelled_before_start(opts: TrainOptions) -> dict:
    return {"reason": "cancelled", "epochs_done": 0, "best": None, "history": [], "best_checkpoint": None,
            "last_checkpoint": None, "device": opts.device, "precision": opts.precision, "wall_s": 0.0}


def build_network(run: Run) -> None:
    """The network, seeded; fine-tuned from ``--init`` and with a frozen encoder where asked; on the device
    in the measured memory format."""
    opts, data = run.opts, run.train_data
    torch.manual_seed(opts.seed)
    model = models.build(opts.model, opts.size, in_channels=data.images.shape[-3], num_classes=data.num_classes,
                         **opts.model_options)
    if opts.init:
        run.init_info = ckpt.init_from(model, opts.init, network=opts.model, size=opts.size,
                                       in_channels=data.images.shape[-3], numbers=channel_keys(data.preprocessing) or None)
        run.emit(Note(text=_init_note(opts.init, run.init_info, data.num_classes)))
    if opts.freeze:
        run.frozen = _freeze_encoder(model, run.info, opts.freeze)
        run.emit(Note(text=f"frozen: the encoder ({len(run.frozen)} tensors: {', '.join(run.info.encoder_prefixes)})"))
    model.to(run.device)
    memory_format = choose_memory_format(opts.model, opts.size, run.device, opts.compile, opts.memory_format)
    run.channels_last = memory_format == "channels_last"
    run.model = model.to(memory_format=torch.channels_last) if run.channels_last else model


def _init_note(init: str, info: dict, num_classes: int) -> str:
    note = f"fine-tuning from {init}: {info['loaded_tensors']} tensors loaded"
    if info.get("mapped_by_level"):
        note += f"; disc heads mapped level by level ({len(info['mapped_by_level'])} tensors)"
    if info["reinitialised"]:
        note += (f"; re-initialised (shape differs: {info['classes_before']} -> {num_classes} classes): "
                 + ", ".join(info["reinitialised"]))
    return note


def _freeze_encoder(model, info: models.ModelInfo, what: str) -> list[str]:
    if what != "encoder":
        raise InvalidInput(f"--freeze takes 'encoder', not {what!r}")
    frozen = []
    for name, p in model.named_parameters():
        if name.startswith(info.encoder_prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    if not frozen:
        raise InvalidInput(f"{info.name} has no encoder parameters to freeze")
    return frozen


def build_optimisation(run: Run) -> None:
    """Optimizer, schedule, gradient scaler and loss of the plan."""
    run.optimizer = build_optimizer(run.model, run.recipe, run.plan["lr"])
    run.scheduler = build_scheduler(run.optimizer, run.recipe, run.plan["epochs"], run.plan["schedule"])
    run.scaler = run.precision.grad_scaler()
    run.criterion = tasks.of(run.info).criterion(run.plan["loss"])


def checkpoint_config(run: Run) -> dict:
    """What every checkpoint of this run records: network, preprocessing, the training as it really ran,
    the data, the fine-tuning source and what the model expects of an input."""
    opts, data, plan = run.opts, run.train_data, run.plan
    return {
        "model": {"name": opts.model, "size": opts.size, "in_channels": data.images.shape[-3],
                  "num_classes": data.num_classes, "options": opts.model_options, "task": run.info.task},
        "preprocessing": data.preprocessing,
        "training": {**{k: v for k, v in asdict(opts).items() if k not in ("model_options",)}, **plan,
                     "recipe": opts.recipe or opts.model, "world_size": run.world, "precision": run.precision.name,
                     "memory_format": "channels_last" if run.channels_last else "contiguous",
                     "channels_last": run.channels_last, "device": str(run.device),
                     # networks with a rendering module add its point loss to whichever loss is chosen
                     "loss_used": plan["loss"] + ("+point" if getattr(run.model, "render", False) else "")},
        "data": run.summary,
        "init": None if run.init_info is None else {**run.init_info, "frozen": opts.freeze,
                                                    "frozen_tensors": len(run.frozen)},
        # what the model expects of an input, from its training cases (engine.expectations; the card's)
        "expects": summarise(data.profiles),
    }


def resume_run(run: Run) -> None:
    """``--resume``: weights, optimizer, schedule, scaler and the loop's state from ``last/``."""
    out = run.out
    if not run.opts.resume:
        return
    if not (out / "last").is_dir():
        raise ckpt.CheckpointError(out, "nothing to resume: no 'last' checkpoint in this folder")
    prev = ckpt.read_config(out / "last")
    if prev["model"]["name"] != run.opts.model or prev["model"]["num_classes"] != run.train_data.num_classes:
        raise ckpt.CheckpointError(out / "last", f"cannot resume: it trains {prev['model']['name']} with "
                                   f"{prev['model']['num_classes']} classes")
    run.model.load_state_dict(ckpt.load_weights(out / "last"))
    ts = ckpt.load_train_state(out / "last")
    if ts is None:
        raise ckpt.CheckpointError(out / "last", "no training state to resume from")
    run.optimizer.load_state_dict(ts["optimizer"])
    if run.scheduler is not None and ts.get("scheduler"):
        run.scheduler.load_state_dict(ts["scheduler"])
    if ts.get("scaler"):
        run.scaler.load_state_dict(ts["scaler"])
    run.state = {k: ts[k] for k in ("epoch", "best", "bad_epochs", "history")}


def prepare_sampling(run: Run) -> None:
    """Dataset (with level repeats), batch size, sampler and steps per epoch; DDP and torch.compile wrap
    the network here."""
    repeats = D.level_repeats(run.train_data.visible) if run.plan["balance_levels"] else None
    if repeats is not None:
        run.config["training"]["repeats"] = {s: int(r) for s, r in zip(run.train_data.stems, repeats) if r > 1}
    run.dataset = tasks.of(run.info).samples(run.train_data, augment=run.plan["augment"], seed=run.opts.seed,
                                             repeats=repeats, square_share=run.opts.disc_square_crops)
    run.batch_size = max(1, min(run.plan["batch_size"], len(run.dataset)))
    # one sampling rule for 1 and N processes: a permutation seeded by (seed, epoch), of which rank r takes
    # every N-th index; so N processes with batch B see exactly the global batches of one process with
    # batch N*B (tests/test_engine.py::test_ddp_is_data_parallel_sgd checks it)
    run.sampler = torch.utils.data.distributed.DistributedSampler(
        run.dataset, num_replicas=run.world, rank=run.rank, shuffle=True, seed=run.opts.seed, drop_last=run.world > 1)
    if run.world > 1:
        run.model = torch.nn.parallel.DistributedDataParallel(run.model)
    run.train_model = torch.compile(run.model) if run.opts.compile else run.model
    run.steps_per_epoch = math.ceil(len(run.dataset) / (run.batch_size * run.world))
    if run.opts.max_steps_per_epoch:
        run.steps_per_epoch = min(run.steps_per_epoch, run.opts.max_steps_per_epoch)


def start(run: Run) -> None:
    """Announce the run; check the folder can be written and keep the exact split there."""
    run.emit(Started(total_epochs=run.plan["epochs"], steps_per_epoch=run.steps_per_epoch, device=str(run.device),
                     precision=run.precision.name, start_epoch=run.state["epoch"]))
    if run.is_main:
        _check_writable(run.out)
        if run.summary.get("split_stems"):  # the run folder keeps the exact split it trained on
            from ..io.atomic import write_text_atomic

            write_text_atomic(run.out / "split.json", json.dumps(run.summary["split_stems"], indent=1) + "\n")
    run.t_start = time.perf_counter()


def one_epoch(run: Run, epoch: int) -> dict | None:
    """The optimisation steps of one epoch: ``{"losses", "data_s", "compute_s"}``, or None if cancelled."""
    torch.manual_seed(run.opts.seed * 100_003 + epoch)  # dropout etc.: same draws with or without resume
    run.dataset.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(
        run.dataset, batch_size=run.batch_size, shuffle=False, sampler=run.sampler,
        num_workers=run.opts.num_workers, worker_init_fn=D.worker_init if run.opts.num_workers else None,
        drop_last=len(run.dataset) > run.batch_size, persistent_workers=False)  # no batch of 1 for BatchNorm
    _train_mode(run)
    total_steps = (run.plan["epochs"] - epoch) * run.steps_per_epoch + run.steps_done
    done = {"losses": [], "data_s": 0.0, "compute_s": 0.0}
    rank_log = os.environ.get("NAPARI_MEDSEG_RANK_LOG")  # DDP diagnostic (docs/engine.md): ids and weight digests
    t_wait = time.perf_counter()
    for step, batch in enumerate(loader):
        t_got = time.perf_counter()
        done["data_s"] += t_got - t_wait
        if step >= run.steps_per_epoch:
            break
        if run.cancel.cancelled:
            return None
        loss = _step(run, batch, where=(epoch + 1, step + 1))
        if rank_log:
            _log_rank_step(rank_log, run.rank, epoch, step, batch, run.model)
        done["losses"].append(float(loss.detach()))
        run.steps_done += 1
        t_wait = time.perf_counter()
        done["compute_s"] += t_wait - t_got
        eta = (time.perf_counter() - run.t_start) / run.steps_done * (total_steps - run.steps_done)
        run.emit(Step(epoch=epoch + 1, step=step + 1, steps_per_epoch=run.steps_per_epoch, loss=done["losses"][-1],
                      eta_s=eta))
    return done


def _train_mode(run: Run) -> None:
    run.model.train()
    if run.frozen:  # a frozen encoder keeps its normalisation statistics too
        for name, module in run.model.named_modules():
            name = name.removeprefix("module.")  # under DDP
            if name.startswith(run.info.encoder_prefixes) and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def _step(run: Run, batch: dict, where: tuple[int, int]) -> torch.Tensor:
    """One :func:`train_step`; the first compiled step falls back to eager mode if the compiler cannot
    handle the network."""
    kw = dict(batch=batch, criterion=run.criterion, optimizer=run.optimizer, scaler=run.scaler,
              precision=run.precision, task=run.info.task, device=run.device, channels_last=run.channels_last,
              where=where)
    if run.train_model is run.model or run.compiled_ok:
        return train_step(run.train_model, **kw)
    try:
        loss = train_step(run.train_model, **kw)
        run.compiled_ok = True
        return loss
    except FloatingPointError:
        raise
    except Exception as err:  # noqa: BLE001 - torch.compile raises many types
        warnings.warn(f"torch.compile failed for {run.opts.model} ({type(err).__name__}: "
                      f"{str(err).splitlines()[0][:160]}); training continues without it", stacklevel=3)
        run.train_model = run.model
        return train_step(run.model, **kw)


def end_epoch(run: Run, epoch: int, done: dict, metrics: dict, preview, lr_epoch: float, seconds: float) -> dict:
    """The schedule's step, the best score, the history record, the checkpoints and the events of an
    epoch. Returns the record."""
    state = run.state
    score = tasks.of(run.info).score(metrics)
    if run.scheduler is not None:
        if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            run.scheduler.step(metrics["val_loss"])  # the plateau is on the validation loss, as the reference
        else:
            run.scheduler.step()
    improved = score > state["best"]
    if improved:
        state["best"], state["bad_epochs"] = score, 0
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch + 1
    losses = done["losses"]
    record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
              **metrics, "lr": lr_epoch, "seconds": seconds, "data_s": done["data_s"],
              "compute_s": done["compute_s"], "samples": len(losses) * run.batch_size}
    state["history"].append(record)
    if improved:
        save(run, "best", with_state=False)
    save(run, "last", with_state=True)
    remaining = (time.perf_counter() - run.t_start) / max(1, run.steps_done) * \
        (run.plan["epochs"] - state["epoch"]) * run.steps_per_epoch
    run.emit(Epoch(epoch=epoch + 1, train_loss=record["train_loss"], metrics=metrics, best=improved,
                   eta_s=remaining, seconds=seconds))
    if preview is not None and (epoch + 1) % max(1, run.opts.preview_every) == 0:
        run.emit(Preview(epoch=epoch + 1, preview=preview))
    return record


def save(run: Run, which: str, with_state: bool):
    """Write ``best/`` or ``last/`` (with the optimiser state for ``--resume``) and the history (main rank)."""
    if not run.is_main:
        return None
    state = run.state
    cfg = {**run.config, "metrics": {"best_val": state["best"], "history": state["history"][-1:] if
                                     state["history"] else []}, "epoch": state["epoch"]}
    ts = None
    if with_state:
        ts = {"optimizer": run.optimizer.state_dict(),
              "scheduler": run.scheduler.state_dict() if run.scheduler else None,
              "scaler": run.scaler.state_dict() if run.precision.scaler else None, **state}
    path = ckpt.save_checkpoint(run.out / which, run.model, cfg, ts)
    (run.out / "history.json").write_text(json.dumps(state["history"], indent=1))
    return path


def finish(run: Run, reason: str) -> dict:
    """Announce the end, wait for the other ranks, and summarise the run."""
    out, state = run.out, run.state
    best_path = out / "best" if (out / "best").is_dir() else out / "last"
    run.emit(Finished(reason=reason, epoch=state["epoch"], best_metric=state["best"], checkpoint=str(best_path)))
    if run.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return {"reason": reason, "epochs_done": state["epoch"], "best": state["best"], "history": state["history"],
            "best_checkpoint": str(best_path), "last_checkpoint": str(out / "last"), "device": str(run.device),
            "precision": run.precision.name, "wall_s": time.perf_counter() - run.t_start}


def _log_rank_step(path: str, rank: int, epoch: int, step: int, batch: dict, model) -> None:
    """One JSON line per optimizer step and rank: the sample ids of the batch and a digest of the weights."""
    import hashlib

    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    with open(f"{path}.rank{rank}", "a") as fh:
        fh.write(json.dumps({"epoch": epoch, "step": step, "ids": batch["index"].tolist(),
                             "weights": h.hexdigest()}) + "\n")


def _claim_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Never replace a run silently: a folder that already holds ``last/`` or ``best/`` is refused unless
    the run is resumed or ``overwrite`` is asked for (then the old checkpoints and history go first)."""
    if resume and overwrite:
        raise InvalidInput("choose resume or overwrite, not both")
    held = [n for n in ("last", "best") if (out / n).is_dir()]
    if not held or resume:
        return
    if not overwrite:
        raise ckpt.CheckpointError(out, f"already holds a run ({' and '.join(h + '/' for h in held)}): resume it "
                                        "(--resume) or replace it (--overwrite), or choose another folder")
    import shutil

    for name in held:
        shutil.rmtree(out / name)
    (out / "history.json").unlink(missing_ok=True)


def _check_writable(out: Path) -> None:
    """Fail before training starts, not after an hour, when the run folder cannot be written."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ckpt.CheckpointError(out, f"cannot write the run folder: {err.strerror or err}") from err


@torch.no_grad()
def validate(model, val: D.Prepared, task: str, device, precision, batch_size: int, criterion=None, cancel=None):
    """Task metrics on the (resized) validation samples (and, given the training ``criterion``, the
    validation loss ``val_loss``), and a preview of the first prediction; ``(None, None)`` when ``cancel``
    is set between two batches."""
    was_training = model.training
    model.eval()
    acc = tasks.of(task).validation()
    for i in range(0, len(val.images), batch_size):
        if cancel is not None and cancel.cancelled:
            model.train(was_training)
            return None, None
        x = torch.as_tensor(val.images[i: i + batch_size], dtype=torch.float32, device=device)
        with precision.autocast():
            out = model(x)
        acc.add(out.float(), val, slice(i, i + batch_size), device, criterion)
    model.train(was_training)
    return acc.metrics(with_loss=criterion is not None), acc.preview
