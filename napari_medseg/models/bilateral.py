"""Bilateral spatial attention network with an attention rendering module (polyp segmentation).

Sun, Sui, Liang, Hu, Du, "Bilateral spatial attention network for medical image segmentation"
(the text in ``shared/specs/papers``). No public code; choices the paper leaves open are marked
**(our choice)**.

* Encoder (Sec. 3, Fig. 1): ResNeXt bottleneck blocks (1x1 -> grouped 3x3, cardinality 8 -> 1x1,
  BN, projection shortcut) at widths 24, 48, 96, 192, 192 and strides 1, 2, 4, 8, 16, with 2, 3, 4, 6,
  3 blocks per stage (the ResNeXt-50 pattern) **(our choice)**.
* ISAM, image space attention (Fig. 2): 6 Swin Transformer blocks (alternating window / shifted
  window, window 8; MONAI's ``BasicLayer``) -> conv3x3-BN-ReLU -> + input: ``f = Conv(STB(f0)) + f0``.
  Swin weights can be initialised from a local ImageNet checkpoint (``swin_weights=path``).
* FSAM, feature space attention: ``U = DConv(Conv(f))`` (dilation 2), ``a = sigmoid(MLP(GAP(U)) +
  MLP(GMP(U)))`` with one shared MLP (reduction 16), output ``U * a + Conv(f)`` (Conv = 3x3 + BN).
* Bilateral: ISAM then FSAM in series on the deepest features.
* Decoder: bilinear x2 + skip concatenation + three conv3x3-BN-ReLU per level, up to stride 4, where a
  1x1 conv gives coarse logits **(our choice)**.
* Attention rendering module (PointRend, Kirillov et al. CVPR 2020): a point head (Conv1d MLP) over
  fine encoder features (strides 1 and 2) + coarse logits at chosen points, the coarse logits fed to
  every layer (PointRend's standard point head).
  - training: about ``train_points`` points, ``importance`` of them where the coarse prediction is
    most uncertain among ``oversample`` x as many random candidates, the rest uniform; the output dict
    carries ``point_logits`` and ``point_coords`` for the point loss (:func:`point_loss`);
  - inference: after each 2x bilinear upsampling from stride 4, the ``subdivision_points`` most
    uncertain pixels (at most a quarter of the pixels, so that at small inputs the point head refines
    the uncertain band instead of replacing the whole map) are re-predicted by the point head; output at
    full resolution.
  ``render=False`` upsamples the coarse logits x4 instead (ablation).

``forward`` returns logits (B, K, H, W); in training mode a dict with ``"logits"`` (coarse logits
upsampled to the input size) and, with rendering, ``"point_logits"`` (B, K, N), ``"point_coords"``
(B, N, 2) as (x, y) in [0, 1].
Parameters (3 channels, 1 class): ``paper`` 6.45 M with the rendering module, 6.30 M without (the
paper: 6.36 M); ``small`` 0.72 M.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import BasicLayer
from torch import nn

from .checks import check_input

SIZES = {
    "paper": {"widths": (24, 48, 96, 192, 192), "blocks": (2, 3, 4, 6, 3), "heads": 6, "point_hidden": 256},
    "small": {"widths": (8, 16, 32, 64, 64), "blocks": (2, 3, 4, 6, 3), "heads": 2, "point_hidden": 64},
}
CARDINALITY = 8


def conv_bn_relu(cin, cout, k=3, dilation=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck (Xie et al. CVPR 2017, Fig. 3c): 1x1 -> grouped 3x3 -> 1x1, projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, cardinality: int = CARDINALITY):
        super().__init__()
        width = max(cardinality, (cout // 2) // cardinality * cardinality)
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        # projection shortcut: subsample, then 1x1 conv. Identical to a strided 1x1 conv, and avoids a
        # torch 2.13 CPU crash (heap corruption) in the backward of strided 1x1 convs on channels_last input
        self.stride = stride
        self.shortcut = nn.Identity() if (cin == cout and stride == 1) else nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        skip = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        return F.relu(self.body(x) + self.shortcut(skip))


class ISAM(nn.Module):
    """Image space attention: Swin blocks -> conv3x3-BN-ReLU -> + input (Fig. 2)."""

    def __init__(self, dim: int, heads: int, depth: int = 6, window: int = 8):
        super().__init__()
        self.swin = BasicLayer(dim=dim, depth=depth, num_heads=heads, window_size=(window, window),
                               drop_path=[0.0] * depth, qkv_bias=True, downsample=None)
        self.conv = conv_bn_relu(dim, dim)

    def forward(self, x):
        return self.conv(self.swin(x)) + x


class FSAM(nn.Module):
    """Feature space attention: conv + dilated conv, channel attention from GAP and GMP with one MLP."""

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        self.conv = conv_bn_relu(dim, dim)
        self.dconv = conv_bn_relu(dim, dim, dilation=2)
        hidden = max(4, dim // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, dim, 1))
        self.residual = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x):
        u = self.dconv(self.conv(x))
        a = torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(u, 1)) + self.mlp(F.adaptive_max_pool2d(u, 1)))
        return u * a + self.residual(x)


class UpBlock(nn.Module):
    """Decoder level: bilinear x2, concatenate the skip, three conv3x3-BN-ReLU **(our choice)**."""

    def __init__(self, cin: int, skip: int, cout: int, convs: int = 3):
        super().__init__()
        self.conv = nn.Sequential(conv_bn_relu(cin + skip, cout), *(conv_bn_relu(cout, cout) for _ in range(convs - 1)))

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


def point_sample(features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (B, C, H, W) at (B, N, 2) points (x, y) in [0, 1] -> (B, C, N)."""
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # (B, N, 1, 2)
    return F.grid_sample(features, grid, mode="bilinear", align_corners=False).squeeze(3)


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Higher where the prediction is less certain: -|logit| (1 class) or -(top1 - top2)."""
    if logits.shape[1] == 1:
        return -logits.abs()
    top2 = torch.topk(logits, 2, dim=1).values
    return -(top2[:, :1] - top2[:, 1:2])


class PointHead(nn.Module):
    """Per-point MLP (Conv1d) over [fine features, coarse logits], with the coarse logits concatenated to
    every hidden layer's input as well (PointRend Sec. 3.3; detectron2's ``coarse_pred_each_layer``):
    the head starts from the coarse answer and learns the correction."""

    def __init__(self, fine_channels: int, num_classes: int, hidden: int, layers: int = 3):
        super().__init__()
        self.fcs = nn.ModuleList()
        cin = fine_channels + num_classes
        for _ in range(layers):
            self.fcs.append(nn.Conv1d(cin, hidden, 1))
            cin = hidden + num_classes
        self.out = nn.Conv1d(cin, num_classes, 1)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        x = fine
        for fc in self.fcs:
            x = F.relu(fc(torch.cat([x, coarse], dim=1)))
        return self.out(torch.cat([x, coarse], dim=1))


class BilateralAttentionNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 1, size: str = "small", render: bool = True,
                 swin_weights: str | Path | None = None, train_points: int = 1024, oversample: int = 3,
                 importance: float = 0.75, subdivision_points: int = 4096, subdivision_steps: int = 2):
        super().__init__()
        cfg = SIZES[size]
        w0, w1, w2, w3, w4 = cfg["widths"]
        self.in_channels, self.num_classes, self.render = in_channels, num_classes, render
        self.train_points, self.oversample, self.importance = train_points, oversample, importance
        self.subdivision_points, self.subdivision_steps = subdivision_points, subdivision_steps
        stages, cin = [], in_channels
        for i, (w, n) in enumerate(zip(cfg["widths"], cfg["blocks"])):
            blocks = [ResNeXtBlock(cin, w, stride=1 if i == 0 else 2)]
            blocks += [ResNeXtBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.encoder = nn.ModuleList(stages)
        self.isam = ISAM(w4, cfg["heads"])
        self.fsam = FSAM(w4)
        self.up3 = UpBlock(w4, w3, w3)
        self.up2 = UpBlock(w3, w2, w2)
        self.coarse_head = nn.Conv2d(w2, num_classes, 1)
        self.point_head = PointHead(w0 + w1, num_classes, cfg["point_hidden"]) if render else None
        if swin_weights is not None:
            self.load_swin_weights(swin_weights)

    def load_swin_weights(self, path: str | Path) -> list[str]:
        """Initialise the ISAM Swin blocks from a local safetensors file (keys as in ``self.isam.swin``,
        optionally prefixed); returns the keys that were not found. Shapes must match."""
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        own = self.isam.swin.state_dict()
        picked = {}
        for key in own:
            hits = [k for k in tensors if k == key or k.endswith("." + key)]
            if hits:
                if tensors[hits[0]].shape != own[key].shape:
                    raise ValueError(f"{path}: {hits[0]} has shape {tuple(tensors[hits[0]].shape)}, "
                                     f"expected {tuple(own[key].shape)}")
                picked[key] = tensors[hits[0]]
        if not picked:
            raise ValueError(f"{path}: no Swin block weights found (expected keys like 'blocks.0.attn.qkv.weight')")
        self.isam.swin.load_state_dict(picked, strict=False)
        return [k for k in own if k not in picked]

    def forward(self, x: torch.Tensor):
        check_input(x, name="bilateral", in_channels=self.in_channels, multiple=16)
        feats = []
        for stage in self.encoder:
            x = stage(x)
            feats.append(x)
        f0, f1, f2, f3, f4 = feats
        deep = self.fsam(self.isam(f4))
        coarse = self.coarse_head(self.up2(self.up3(deep, f3), f2))  # stride 4
        size = f0.shape[-2:]
        if not self.render:
            logits = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
            return {"logits": logits} if self.training else logits
        if self.training:
            coords = self._training_points(coarse)
            point_logits = self.point_head(self._fine(f0, f1, coords), point_sample(coarse, coords))
            logits = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
            return {"logits": logits, "point_logits": point_logits, "point_coords": coords}
        return self._refine(coarse, f0, f1)

    @staticmethod
    def _fine(f0, f1, coords):
        return torch.cat([point_sample(f0, coords), point_sample(f1, coords)], dim=1)

    def _training_points(self, coarse: torch.Tensor) -> torch.Tensor:
        b, n = coarse.shape[0], self.train_points
        candidates = torch.rand(b, n * self.oversample, 2, device=coarse.device, dtype=coarse.dtype)
        unc = uncertainty(point_sample(coarse.detach(), candidates))[:, 0]  # (B, kN)
        n_imp = int(self.importance * n)
        idx = torch.topk(unc, n_imp, dim=1).indices
        chosen = torch.gather(candidates, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
        rest = torch.rand(b, n - n_imp, 2, device=coarse.device, dtype=coarse.dtype)
        return torch.cat([chosen, rest], dim=1)

    def _refine(self, logits, f0, f1):
        """Inference: upsample x2 and re-predict the most uncertain pixels, until full resolution."""
        out_h, out_w = f0.shape[-2:]
        while logits.shape[-2] < out_h:
            logits = F.interpolate(logits, scale_factor=2.0, mode="bilinear", align_corners=False)
            b, k, h, w = logits.shape
            n = min(self.subdivision_points, h * w // 4)  # the most uncertain quarter at most **(our choice)**
            idx = torch.topk(uncertainty(logits).flatten(1), n, dim=1).indices  # (B, N)
            ys = torch.div(idx, w, rounding_mode="floor")
            xs = idx - ys * w
            coords = torch.stack([(xs.to(logits.dtype) + 0.5) / w, (ys.to(logits.dtype) + 0.5) / h], dim=-1)
            point_logits = self.point_head(self._fine(f0, f1, coords), point_sample(logits, coords))
            logits = logits.flatten(2).scatter(2, idx.unsqueeze(1).expand(-1, k, -1), point_logits).view(b, k, h, w)
        return logits


def point_targets(target: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Labels (B, H, W) or (B, 1, H, W) sampled (nearest) at (B, N, 2) points -> (B, N)."""
    t = target if target.ndim == 4 else target.unsqueeze(1)
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(torch.float32)
    return F.grid_sample(t.to(torch.float32), grid, mode="nearest", align_corners=False)[:, 0, :, 0]


def point_loss(outputs: dict, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (or BCE for one class) of the point head at the training points."""
    logits, coords = outputs["point_logits"], outputs["point_coords"]
    labels = point_targets(target, coords)
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), labels)
    return F.cross_entropy(logits.float(), labels.long())
