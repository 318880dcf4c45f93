"""Gradient fidelity: does a network's reduced-precision training gradient agree with fp64?

The check behind the per-network precision policy (``ModelInfo.bf16_training``): on one real batch,
the gradient of the training loss with respect to every parameter is computed twice from the same
weights, once in float64 (the reference) and once as the trainer computes it (float32 weights,
channels_last, bf16 autocast), and the cosine between the two flattened gradients is reported. A
network passes when the cosine is at least 0.99 at initialisation and after a few fp32 training steps.

Dropout is switched off in both copies (its masks are random draws, not a precision effect); every
other random draw (the bilateral network's training points) is seeded identically for both passes.
BatchNorm runs in training mode, as it does in the trainer.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .. import models
from .losses import build_loss

THRESHOLD = 0.99


def _no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return model


def _loss(model, batch: dict, task: str, loss_name: str, dtype, autocast_dtype, channels_last: bool, seed: int):
    x = batch["image"].to(dtype)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    criterion = build_loss(loss_name, task)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = model(x)
    if task == "keypoints":
        return criterion(out, batch["target"].to(dtype), batch["visible"])
    return criterion(out, batch["target"])


def flat_gradient(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().double()
                      for p in model.parameters()])


def gradient_cosine(model: torch.nn.Module, batch: dict, task: str, loss_name: str,
                    dtype: torch.dtype = torch.bfloat16, channels_last: bool = True, seed: int = 0) -> float:
    """Cosine between the fp64 gradient and the ``dtype``-autocast (+ channels_last) gradient of
    ``model``'s current weights on ``batch`` (``image``, ``target`` and, for discs, ``visible``)."""
    ref = _no_dropout(copy.deepcopy(model)).double().train()
    low = _no_dropout(copy.deepcopy(model)).float().train()
    if channels_last:
        low = low.to(memory_format=torch.channels_last)
    _loss(ref, batch, task, loss_name, torch.float64, None, False, seed).backward()
    _loss(low, batch, task, loss_name, torch.float32, dtype, channels_last, seed).backward()
    g64, glow = flat_gradient(ref), flat_gradient(low)
    return float(torch.dot(g64, glow) / (g64.norm() * glow.norm()).clamp(min=1e-300))


def fidelity(name: str, batch: dict, *, size: str = "small", steps: int = 3, loss: str | None = None,
             lr: float | None = None, seed: int = 0, model_options: dict | None = None,
             channels_last: bool = True) -> dict:
    """Gradient cosine of network ``name`` at initialisation and after ``steps`` fp32 Adam steps on
    ``batch`` with its recipe's loss and learning rate; the bf16 side runs channels_last or contiguous
    (``channels_last``). Returns ``{"init", "trained", "passes"}``."""
    info = models.REGISTRY[name]
    recipe = info.recipe
    loss = loss or ("heatmap_mse" if info.task == "keypoints" else recipe.get("loss", "dice_ce"))
    channels = batch["image"].shape[-3]
    k = batch["target"].shape[1] if info.task == "keypoints" else max(2, int(batch["target"].max()) + 1)
    torch.manual_seed(seed)
    model = models.build(name, size, in_channels=channels, num_classes=k, **(model_options or {})).train()
    init = gradient_cosine(model, batch, info.task, loss, seed=seed, channels_last=channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=lr or recipe.get("lr", 1e-3))
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        _loss(model, batch, info.task, loss, torch.float32, None, False, seed + 1 + step).backward()
        opt.step()
    trained = gradient_cosine(model, batch, info.task, loss, seed=seed + 100, channels_last=channels_last) if steps else init
    return {"network": name, "loss": loss, "init": init, "trained": trained,
            "passes": bool(min(init, trained) >= THRESHOLD)}


def real_batch(name: str, data_root, n: int = 4, input_size: int = 128) -> dict:
    """A batch of ``n`` training samples for network ``name`` from the dataset it is measured on:
    Kvasir-SEG (2D networks), ACDC (LSTMSA, 2.5D stacks from the middle of the first volume), the lumbar
    disc set (hourglass). ``data_root`` is a folder laid out like the project's shared data."""
    from pathlib import Path

    from . import data as D

    root = Path(data_root)
    info = models.REGISTRY[name]
    if info.task == "keypoints":
        layout = D.discover(root / "spine-discs")
        stems = D.split(layout)["train"][:n]
        prep = D.prepare(layout, stems, size=(input_size, input_size), channels=3)
        return {"image": torch.as_tensor(prep.images), "target": torch.as_tensor(prep.targets),
                "visible": torch.as_tensor(prep.visible)}
    if name == "lstmsa":
        layout = D.discover(root / "acdc")
        prep = D.prepare(layout, D.split(layout)["train"][:1], size=(input_size, input_size), channels=1, context=1)
        mid = len(prep.images) // 2
        idx = np.arange(mid - n // 2, mid - n // 2 + n)
        return {"image": torch.as_tensor(prep.images[idx]), "target": torch.as_tensor(prep.targets[idx])}
    layout = D.discover(root / "kvasir-seg")
    prep = D.prepare(layout, D.split(layout)["train"][:n], size=(input_size, input_size), channels=3,
                     normalize=info.input_norm)
    return {"image": torch.as_tensor(prep.images), "target": torch.as_tensor(prep.targets)}
