"""What can be run: the networks and the weights bundled in the package, listed without importing torch
(``napari-medseg models`` answers in well under 2 s). :mod:`napari_medseg.api` re-exports both functions."""

from __future__ import annotations

from pathlib import Path

from .engine import tasks
from .engine.config import bundled_weights

# the task in words, by the dataset a bundled model was trained on
TASKS = {
    "kvasir-seg": "polyp segmentation, colonoscopy images",
    "ph2": "skin lesion segmentation, dermoscopy images",
    "isic2016-crops": "skin lesion segmentation, dermoscopy images",
    "acdc": "heart segmentation (RV, myocardium, LV), cine MRI",
    "spine-discs": "intervertebral disc labeling, sagittal lumbar MRI",
}


def _policy(info: dict) -> str:
    """The training precision rule of a network card, in words."""
    if not info["bf16_training"]:
        return "fp32 (a parameter group's bf16 gradient disagrees with fp64)"
    return "bf16 where the hardware has it, else fp32"


def _size_on_disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def list_models() -> list[dict]:
    """Networks and bundled weights, as ``napari-medseg models --json`` prints them. Network rows have
    ``weights: False``; bundled rows add the task in words, dataset, test metrics and size on disk."""
    from . import models
    from .engine.config import read_config

    rows = []
    for info in models.available():
        recipe = info["recipe"]
        rows.append({"name": info["name"], "network": info["name"], "size": "small|paper", "task": info["task"],
                     "dataset": None, "weights": False, "metrics": {}, "parameters": info["parameters"],
                     "title": info["title"], "memory_format": info["memory_format"],
                     "precision": _policy(info),
                     "loss": tasks.of(info["task"]).loss(None, recipe)})
    for name, path in bundled_weights().items():
        cfg = read_config(path)
        card = cfg.get("card", {})
        training = cfg.get("training", {})
        rows.append({"name": name, "network": cfg["model"]["name"], "size": cfg["model"].get("size"),
                     "task": cfg["model"].get("task"), "dataset": card.get("dataset"), "weights": True,
                     "task_in_words": TASKS.get(card.get("dataset"), cfg["model"].get("task")),
                     "metrics": card.get("test_metrics", {}), "path": str(path), "bytes": _size_on_disk(path),
                     "precision": training.get("precision"), "loss": training.get("loss_used", training.get("loss"))})
    return rows
