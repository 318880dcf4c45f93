"""Gradient fidelity: does a network's reduced-precision training gradient agree with fp64?

The check behind the per-network precision policy (``ModelInfo.bf16_training``): on one real batch,
the gradient of the training loss with respect to every parameter is computed twice from the same
weights, once in float64 (the reference) and once as the trainer computes it (float32 weights,
channels_last, bf16 autocast), and the cosine between the two flattened gradients is reported, for the
whole network and for each parameter group (encoder, decoder, heads: ``ModelInfo.parameter_group``), because
one global cosine is dominated by the largest gradients and hides a group that disagrees. A network passes
when every group's cosine is at least 0.99 at initialisation, after a few fp32 training steps and, where
trained weights are given (:func:`fidelity_of_weights`), on those weights.

Dropout is switched off in both copies (its masks are random draws, not a precision effect); every
other random draw (the bilateral network's training points) is seeded identically for both passes.
BatchNorm runs in training mode, as it does in the trainer.
"""

from __future__ import annotations

import copy

import torch

from .. import models
from . import tasks

THRESHOLD = 0.99


def _no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return model


def _loss(model, batch: dict, task: str, loss_name: str, dtype, autocast_dtype, channels_last: bool, seed: int):
    """The training loss of ``model`` on ``batch``, on the model's device (CPU or CUDA autocast)."""
    device = next(model.parameters()).device
    x = batch["image"].to(device, dtype)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    criterion = tasks.of(task).criterion(loss_name)
    torch.manual_seed(seed)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        out = model(x)
    return tasks.of(task).batch_loss(criterion, out, batch, device, dtype)


def flat_gradient(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().double()
                      for p in model.parameters()])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp(min=1e-300))


def gradient_cosines(model: torch.nn.Module, batch: dict, task: str, loss_name: str,
                     dtype: torch.dtype = torch.bfloat16, channels_last: bool = True, seed: int = 0,
                     group_of=None) -> dict[str, float]:
    """Cosines between the fp64 gradient and the ``dtype``-autocast (+ channels_last) gradient of
    ``model``'s current weights on ``batch`` (``image``, ``target`` and, for discs, ``visible``):
    ``{"all": c, <group>: c, ...}`` with groups named by ``group_of(parameter name)`` (None: "all" only).
    A group without gradient in either pass is left out."""
    ref = _no_dropout(copy.deepcopy(model)).double().train()
    low = _no_dropout(copy.deepcopy(model)).float().train()
    if channels_last:
        low = low.to(memory_format=torch.channels_last)
    _loss(ref, batch, task, loss_name, torch.float64, None, False, seed).backward()
    autocast = None if dtype == torch.float32 else dtype  # fp32 against fp64: no autocast at all
    _loss(low, batch, task, loss_name, torch.float32, autocast, channels_last, seed).backward()
    out = {"all": _cosine(flat_gradient(ref), flat_gradient(low))}
    if group_of is None:
        return out
    parts: dict[str, tuple[list, list]] = {}
    for (name, p64), (_, plow) in zip(ref.named_parameters(), low.named_parameters()):
        if p64.grad is None or plow.grad is None:
            continue
        a, b = parts.setdefault(group_of(name), ([], []))
        a.append(p64.grad.detach().flatten().double())
        b.append(plow.grad.detach().flatten().double())
    for group, (a, b) in sorted(parts.items()):
        out[group] = _cosine(torch.cat(a), torch.cat(b))
    return out


def gradient_cosine(model: torch.nn.Module, batch: dict, task: str, loss_name: str,
                    dtype: torch.dtype = torch.bfloat16, channels_last: bool = True, seed: int = 0) -> float:
    """The whole network's cosine of :func:`gradient_cosines`."""
    return gradient_cosines(model, batch, task, loss_name, dtype, channels_last, seed)["all"]


def _worst(cosines: dict[str, float]) -> float:
    return min(cosines.values())


def fidelity(name: str, batch: dict, *, size: str = "small", steps: int = 3, loss: str | None = None,
             lr: float | None = None, seed: int = 0, model_options: dict | None = None,
             channels_last: bool = True, dtype: torch.dtype = torch.bfloat16, device="cpu") -> dict:
    """Gradient cosines of network ``name`` at initialisation and after ``steps`` fp32 Adam steps on
    ``batch`` with its recipe's loss and learning rate, on ``device``; the low-precision side (``dtype``:
    bf16, fp16, or ``torch.float32`` for an fp32-against-fp64 check) runs channels_last or contiguous.
    Returns ``{"init", "trained"}`` (whole-network cosines), ``"groups_init"``, ``"groups_trained"``
    (per parameter group) and ``"passes"`` (every group >= :data:`THRESHOLD` both times)."""
    info = models.REGISTRY[name]
    recipe = info.recipe
    loss = tasks.of(info).loss(loss, recipe)
    channels = batch["image"].shape[-3]
    k = tasks.of(info).channels_of(batch["target"])
    torch.manual_seed(seed)
    model = models.build(name, size, in_channels=channels, num_classes=k, **(model_options or {})).to(device).train()
    kw = dict(dtype=dtype, channels_last=channels_last, group_of=info.parameter_group)
    init = gradient_cosines(model, batch, info.task, loss, seed=seed, **kw)
    opt = torch.optim.Adam(model.parameters(), lr=lr or recipe.get("lr", 1e-3))
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        _loss(model, batch, info.task, loss, torch.float32, None, False, seed + 1 + step).backward()
        opt.step()
    trained = gradient_cosines(model, batch, info.task, loss, seed=seed + 100, **kw) if steps else init
    return {"network": name, "loss": loss, "init": init["all"], "trained": trained["all"],
            "groups_init": init, "groups_trained": trained,
            "passes": bool(min(_worst(init), _worst(trained)) >= THRESHOLD)}


def fidelity_of_weights(weights, batch: dict, *, loss: str | None = None, channels_last: bool = True,
                        dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> dict:
    """Gradient cosines of a trained checkpoint (a bundled name or a checkpoint folder) on ``batch``, per
    parameter group: ``{"network", "weights", "cosines", "passes"}``. Trained weights are where a
    reduced-precision gradient drifts most (sharper minima, larger activations)."""
    from . import checkpoint

    model, cfg = checkpoint.load_model(checkpoint.resolve_init(str(weights)))
    name = cfg["model"]["name"]
    info = models.REGISTRY[name]
    loss = loss or cfg.get("training", {}).get("loss") or info.recipe.get("loss", "dice_ce")
    cos = gradient_cosines(model.float().train(), batch, info.task, loss, dtype=dtype, channels_last=channels_last,
                           seed=seed, group_of=info.parameter_group)
    return {"network": name, "weights": str(weights), "loss": loss, "cosines": cos,
            "passes": bool(_worst(cos) >= THRESHOLD)}


def real_batch(name: str, data_root, n: int = 4, input_size: int = 128, disc_numbers: list | None = None,
               dataset: str | None = None) -> dict:
    """A batch of ``n`` training samples for network ``name`` from the dataset it is measured on:
    Kvasir-SEG (2D networks), ACDC (LSTMSA, 2.5D stacks from the middle of the first volume), the lumbar
    disc set (hourglass); ``dataset`` names another folder (a trained checkpoint's own: 2-D images, or the
    middle slices of a volume). ``data_root`` is a folder laid out like the project's shared data."""
    from pathlib import Path

    info = models.REGISTRY[name]
    return tasks.of(info).example_batch(info, Path(data_root), n, input_size, dataset, disc_numbers)
