"""Per-task losses: Dice + cross-entropy for segmentation (plus the rendering module's point loss),
the per-stack heatmap MSE for disc labeling."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss


class SegmentationLoss(torch.nn.Module):
    def __init__(self, ce_weight: float = 0.5, dice_weight: float = 0.5, point_weight: float = 1.0):
        super().__init__()
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=ce_weight, lambda_dice=dice_weight)
        self.point_weight = point_weight

    def forward(self, out, target: torch.Tensor) -> torch.Tensor:
        logits = out["logits"] if isinstance(out, dict) else out
        loss = self.dice_ce(logits.float(), target.unsqueeze(1))
        if isinstance(out, dict) and "point_logits" in out:
            from ..models.bilateral import point_loss

            loss = loss + self.point_weight * point_loss(out, target)
        return loss


class HeatmapLoss(torch.nn.Module):
    """Per stack: MSE averaged over the visible discs' channels; summed over stacks (the paper's loss)."""

    def forward(self, out, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        stacks = out["stack_heatmaps"] if isinstance(out, dict) else out.unsqueeze(1)
        err = (stacks.float() - target.unsqueeze(1)) ** 2  # (B, S, K, H, W)
        per_channel = err.mean(dim=(-1, -2))  # (B, S, K)
        w = visible.float().unsqueeze(1)
        return ((per_channel * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp(min=1)).sum()


def heatmap_peaks(heatmaps: torch.Tensor) -> torch.Tensor:
    """Argmax (row, col) per channel: (B, K, 2)."""
    b, k, h, w = heatmaps.shape
    idx = heatmaps.flatten(2).argmax(-1)
    return torch.stack([idx // w, idx % w], dim=-1)


def mean_peak_error(heatmaps: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> float:
    d = (heatmap_peaks(heatmaps) - heatmap_peaks(target)).float().norm(dim=-1)
    return float(d[visible].mean()) if visible.any() else float("nan")


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean foreground Dice of the argmax prediction per image: (B,)."""
    k = logits.shape[1]
    pred = logits.argmax(1)
    dices = []
    for c in range(1, max(k, 2)):
        p, t = pred == c, target == c
        inter = (p & t).sum((1, 2)).float()
        denom = p.sum((1, 2)).float() + t.sum((1, 2)).float()
        dices.append(torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom)))
    return torch.stack(dices, 1).mean(1)
