"""Per-task losses, chosen by name from the recipe (``TrainOptions.loss``):

* ``dice_ce``: 0.5 soft Dice + 0.5 cross-entropy over softmax (MONAI ``DiceCELoss``);
* ``ce``: cross-entropy over softmax;
* ``bce``: binary cross-entropy of a sigmoid foreground output, as BCDU-Net's reference (Keras
  ``binary_crossentropy`` on a 1-channel sigmoid). Our networks give K = 2 logits for a binary task,
  so the sigmoid input is the logit difference ``l1 - l0``: BCE on ``sigmoid(l1 - l0)`` is the same
  function as 2-class cross-entropy, written as the paper writes it. K > 2 is refused;
* ``heatmap_mse``: per stack, MSE averaged over the discs' channels (the pixels of them that count), summed over stacks
  (the disc-labeling paper's loss).

**Partial labels** (a class not drawn for a case is unknown there, not background: ``present`` (B, K), the
classes labelled in each sample, engine/data.py ``Prepared.present``). The logits of a sample's
unlabelled classes are left out of its softmax (replaced by a constant far below the others, so their
gradient is exactly zero): cross-entropy and Dice then ask only that background and each drawn organ be
told apart from one another, and an organ that was not drawn may take any share of the pixels the file
calls background without cost. Dice is averaged over the (sample, class) pairs that are labelled. With
every class present this is the same function as ``dice_ce`` / ``ce`` (a test checks it). ``bce`` is
binary and refuses partial labels.

The bilateral network's rendering module adds its point loss (``+point``) to whichever segmentation
loss is chosen, whenever the network returns point logits.

Logits are computed in at least fp32 (bf16 autocast outputs are upcast; fp64 stays fp64, so the
gradient-fidelity check can run a float64 reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from ..io.errors import InvalidInput
from .choices import SEGMENTATION_LOSSES


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


class SegmentationLoss(torch.nn.Module):
    def __init__(self, name: str = "dice_ce", point_weight: float = 1.0):
        super().__init__()
        if name not in SEGMENTATION_LOSSES:
            raise InvalidInput(f"unknown segmentation loss {name!r}; choose from {SEGMENTATION_LOSSES}")
        self.name = name
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.5, lambda_dice=0.5)
        self.dice_each = DiceLoss(to_onehot_y=True, softmax=True, reduction="none")  # the same Dice, per (b, c)
        self.point_weight = point_weight

    def forward(self, out, target: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        logits = at_least_fp32(out["logits"] if isinstance(out, dict) else out)
        if present is not None and not bool(present.all()):
            loss = self.partial_loss(logits, target, present.to(logits.device).bool())
        else:
            loss = self.pixel_loss(logits, target)
        if isinstance(out, dict) and "point_logits" in out:
            from ..models.bilateral import point_loss

            loss = loss + self.point_weight * point_loss(out, target)
        return loss

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.name == "dice_ce":
            return self.dice_ce(logits, target.unsqueeze(1))
        if self.name == "ce":
            return F.cross_entropy(logits, target.long())
        return binary_ce(logits, target)

    def partial_loss(self, logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The loss with each sample's unlabelled classes left out (module docstring)."""
        if self.name == "bce":
            raise InvalidInput("the 'bce' loss is binary and cannot leave out unlabelled classes: use dice_ce or ce")
        if present.shape != logits.shape[:2]:
            raise InvalidInput(f"present has shape {tuple(present.shape)}, expected (batch, classes) = {tuple(logits.shape[:2])}")
        if bool((~present.gather(1, target.long().flatten(1))).any()):
            raise InvalidInput("a pixel is labelled with a class its sample does not list as drawn")
        floor = torch.finfo(logits.dtype).min / 4  # exp(floor - max) == 0: the class leaves the softmax
        mask = ~present.view(*present.shape, *([1] * (logits.ndim - 2)))
        masked = logits.masked_fill(mask, floor)
        ce = F.cross_entropy(masked, target.long())
        if self.name == "ce":
            return ce
        dice = self.dice_each(masked, target.unsqueeze(1)).reshape(present.shape)
        return 0.5 * dice[present].mean() + 0.5 * ce


def binary_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE of the sigmoid foreground output; ``logits`` (B, 2, ...) are turned into ``l1 - l0``
    (or (B, 1, ...) used as they are). ``target`` holds 0/1."""
    k = logits.shape[1]
    if k > 2:
        raise InvalidInput(f"the 'bce' loss is for binary segmentation; this task has {k} classes (use dice_ce or ce)")
    if int(target.max()) > 1:
        raise InvalidInput("the 'bce' loss needs 0/1 targets")
    fg = logits[:, 0] if k == 1 else logits[:, 1] - logits[:, 0]
    return F.binary_cross_entropy_with_logits(fg, target.to(fg.dtype))


class HeatmapLoss(torch.nn.Module):
    """Per stack: MSE averaged over the discs' channels that count; summed over stacks (the paper's loss).

    ``known``: (B, K) -- a channel counts wholly or not at all (a labelled level) -- or (B, C, H, W), the
    pixels of each channel that count (engine/disc_targets.py ``known_masks``: the empty part of an
    unlabelled level's channel). A channel's error is its squared error summed over the pixels that count,
    divided by all its pixels, so a channel known everywhere weighs as in the paper's loss; channels with no
    pixel that counts are left out of the mean. A (B, K) mask for a model with depth channels (C = 2K)
    applies to both halves."""

    name = "heatmap_mse"

    def forward(self, out, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        stacks = out["stack_heatmaps"] if isinstance(out, dict) else out.unsqueeze(1)
        stacks = at_least_fp32(stacks)
        err = (stacks - target.to(stacks.dtype).unsqueeze(1)) ** 2  # (B, S, C, H, W)
        c = err.shape[2]
        if known.ndim == 2 and known.shape[1] != c:
            known = known.repeat(1, c // known.shape[1])
        if known.ndim == 2:
            per_channel = err.mean(dim=(-1, -2))  # (B, S, C)
            w = known.to(stacks.dtype).unsqueeze(1)
        else:
            m = known.to(stacks.dtype).unsqueeze(1)  # (B, 1, C, H, W)
            per_channel = (err * m).mean(dim=(-1, -2))
            w = (known.flatten(2).any(-1)).to(stacks.dtype).unsqueeze(1)
        return ((per_channel * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp(min=1)).sum()


def heatmap_peaks(heatmaps: torch.Tensor) -> torch.Tensor:
    """Argmax (row, col) per channel: (B, K, 2)."""
    b, k, h, w = heatmaps.shape
    idx = heatmaps.flatten(2).argmax(-1)
    return torch.stack([idx // w, idx % w], dim=-1)


def mean_peak_error(heatmaps: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> float:
    """Mean pixel distance between the predicted and the true peak of each visible level's heatmap
    (``visible``: (B, K); depth channels after the first K are not scored)."""
    k = visible.shape[1]
    d = (heatmap_peaks(heatmaps[:, :k]) - heatmap_peaks(target[:, :k])).float().norm(dim=-1)
    return float(d[visible].mean()) if visible.any() else float("nan")


def soft_dice(logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """Mean foreground Dice of the argmax prediction per image: (B,). With ``present`` (B, K), only the
    classes labelled in an image count (an organ that was not drawn is not scored; an image with no drawn
    organ gives NaN)."""
    k = logits.shape[1]
    pred = logits.argmax(1)
    dices = []
    for c in range(1, max(k, 2)):
        p, t = pred == c, target == c
        inter = (p & t).sum((1, 2)).float()
        denom = p.sum((1, 2)).float() + t.sum((1, 2)).float()
        dices.append(torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom)))
    d = torch.stack(dices, 1)
    if present is None:
        return d.mean(1)
    w = present[:, 1: d.shape[1] + 1].to(d.dtype)
    return (d * w).sum(1) / w.sum(1)
