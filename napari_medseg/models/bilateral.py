"""Bilateral spatial attention network with an attention rendering module (polyp segmentation).

Sun, Sui, Liang, Hu, Du, "Bilateral spatial attention network for medical image segmentation"
(the text in ``shared/specs/papers``). No public code; choices the paper leaves open are marked
**(our choice)**.

* Encoder (Sec. 3, Fig. 1): ResNeXt bottleneck blocks (1x1 -> grouped 3x3 -> 1x1, BN, projection
  shortcut) at widths 24, 48, 96, 192, 192 and strides 1, 2, 4, 8, 16, with 2, 3, 4, 6, 3 blocks per
  stage (the ResNeXt-50 pattern) **(our choice)**. The grouped 3x3 keeps ResNeXt's 4 channels per group
  and the paper's cardinality 8 where the width allows it: ``groups = min(8, width // 4)`` (``small``: 1,
  2, 4, 8, 8 groups; ``paper``: 3, 6, 8, 8, 8) **(our choice)**. ``group_width=None`` is the first
  design, cardinality 8 at every width (1 channel per group in ``small``'s first stages: an almost
  depthwise encoder that underfits), kept to load checkpoints trained with it. The last BN scale of every block starts
  at zero (``zero_init_residual``, as torchvision's ResNeXt) **(our choice)**: it makes the 18-block
  stack stable at init, which bf16 training needs. ``residual="preact"`` swaps in pre-activation
  bottlenecks (He et al. ECCV 2016, "Identity mappings": BN-ReLU before each conv, nothing after the
  addition), the other stable init the research-network issue names **(our choice of wiring)**: the
  stem-less first block of a stage convolves its input directly (the image, or the previous stage's
  normalised output) with a projection shortcut, the other blocks are full pre-activation units with
  identity shortcuts, and each stage ends with BN-ReLU (the pre-activation of the next stage, moved
  so that the skip features the decoder, ISAM and the point head read are normalised, as in the
  post-activation network).
* ISAM, image space attention (Fig. 2): 6 Swin Transformer blocks (alternating window / shifted
  window, window 8; MONAI's ``BasicLayer``) -> conv3x3-BN-ReLU -> + input: ``f = Conv(STB(f0)) + f0``.
  Swin weights can be initialised from a local ImageNet Swin-T checkpoint converted to safetensors
  (``swin_weights=path``; :func:`load_swin_into`: stage of matching width, blocks repeated in order,
  ``fc1/fc2`` renamed, bias tables resized from window 7 to 8). No file is bundled.
* FSAM, feature space attention: ``U = DConv(Conv(f))`` (dilation 2), ``a = sigmoid(MLP(GAP(U)) +
  MLP(GMP(U)))`` with one shared MLP (reduction 16), output ``U * a + Conv(f)`` (Conv = 3x3 + BN).
* Bilateral: ISAM then FSAM in series on the deepest features.
* Decoder, U-shaped (the paper fuses features of every scale): bilinear x2 + skip concatenation + three
  conv3x3-BN-ReLU per level, up to full resolution, where a 1x1 conv gives the dense logits **(our
  choice)**. ``decoder="stride4"`` is the first design: it stops at stride 4 and never reads f0/f1 (they
  reach only the point head), kept to load checkpoints trained with it.
* Attention rendering module (PointRend, Kirillov et al. CVPR 2020): a point head (Conv1d MLP) over
  fine encoder features (strides 1 and 2) + coarse logits at chosen points, the coarse logits fed to
  every layer (PointRend's standard point head).
  - training: about ``train_points`` points, ``importance`` of them where the coarse prediction is
    most uncertain among ``oversample`` x as many random candidates, the rest uniform; the output dict
    carries ``point_logits`` and ``point_coords`` for the point loss (:func:`point_loss`);
  - inference: the ``subdivision_points`` most uncertain pixels (at most a quarter of the pixels, so
    that at small inputs the point head refines the uncertain band instead of replacing the whole map)
    are re-predicted by the point head: once at full resolution after the U-shaped decoder, or after each
    2x bilinear upsampling from stride 4 with ``decoder="stride4"`` (PointRend's subdivision).
  ``render=False`` returns the decoder's logits (upsampled x4 with ``decoder="stride4"``; ablation).

``forward`` returns logits (B, K, H, W); in training mode a dict with ``"logits"`` (coarse logits
upsampled to the input size) and, with rendering, ``"point_logits"`` (B, K, N), ``"point_coords"``
(B, N, 2) as (x, y) in [0, 1].
Parameters (3 channels, 1 class): see ``models.registry.PARAMETERS`` (``paper`` about 6.5 M, the paper:
6.36 M).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import BasicLayer
from torch import nn

from ..io.errors import InvalidInput
from .checks import check_input
from .multiples import MULTIPLES

SIZES = {
    "paper": {"widths": (24, 48, 96, 192, 192), "blocks": (2, 3, 4, 6, 3), "heads": 6, "point_hidden": 256},
    "small": {"widths": (8, 16, 32, 64, 64), "blocks": (2, 3, 4, 6, 3), "heads": 2, "point_hidden": 64},
}
CARDINALITY = 8  # the paper's cardinality
GROUP_WIDTH = 4  # channels per group of the grouped 3x3 (ResNeXt's 32x4d) **(our choice)**
DECODERS = ("full", "stride4")
NORMS = ("batch", "instance")


def bottleneck_shape(cout: int, group_width: int | None = GROUP_WIDTH) -> tuple[int, int]:
    """(width, groups) of the grouped 3x3 in a bottleneck with ``cout`` output channels: half the output
    width in ``min(8, width // group_width)`` groups; ``group_width=None``: 8 groups at any width (the
    first design)."""
    if group_width is None:
        return max(CARDINALITY, (cout // 2) // CARDINALITY * CARDINALITY), CARDINALITY
    width = max(group_width, cout // 2)
    groups = max(1, min(CARDINALITY, width // group_width))
    return width // groups * groups, groups


def conv_bn_relu(cin, cout, k=3, dilation=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck (Xie et al. CVPR 2017, Fig. 3c): 1x1 -> grouped 3x3 -> 1x1, projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, group_width: int | None = GROUP_WIDTH,
                 zero_init_residual: bool = True):
        super().__init__()
        width, groups = bottleneck_shape(cout, group_width)
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        if zero_init_residual:
            # Goyal et al. 2017 / torchvision's ``zero_init_residual``: the last BN scale starts at 0, so
            # every block starts as its shortcut. Without it the 18 post-activation blocks with train-mode
            # BN are chaotic at init: bf16-sized weight noise moved the logits by ~27 % and the bf16
            # gradient's cosine to fp64 was ~0.06 (with it: >= 0.99, tests/test_precision.py)
            nn.init.zeros_(self.body[-1].weight)
        # projection shortcut: subsample, then 1x1 conv. Identical to a strided 1x1 conv, and avoids a
        # torch 2.13 CPU crash (heap corruption) in the backward of strided 1x1 convs on channels_last input
        self.stride = stride
        self.shortcut = nn.Identity() if (cin == cout and stride == 1) else nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        skip = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        return F.relu(self.body(x) + self.shortcut(skip))


class PreActResNeXtBlock(nn.Module):
    """Pre-activation ResNeXt bottleneck (He et al. ECCV 2016, Fig. 4e): BN-ReLU-1x1 -> BN-ReLU-grouped
    3x3 -> BN-ReLU-1x1, identity shortcut, no activation after the addition.

    Args:
        cin, cout: channels in and out.
        stride: stride of the grouped 3x3 conv (and subsampling of the shortcut).
        group_width: channels per group of the 3x3 conv (:func:`bottleneck_shape`).
        first: the stage's first block, whose input is already normalised (the image or the previous
            stage's BN-ReLU output): no pre-activation of its own, and a projection shortcut where the
            shape changes **(our choice)**.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, group_width: int | None = GROUP_WIDTH,
                 first: bool = False):
        super().__init__()
        width, groups = bottleneck_shape(cout, group_width)
        pre = [] if first else [nn.BatchNorm2d(cin), nn.ReLU(inplace=False)]
        self.body = nn.Sequential(
            *pre, nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
        )
        self.stride = stride
        # subsample then 1x1 conv, as ResNeXtBlock (avoids the strided-1x1 channels_last crash)
        self.shortcut = nn.Identity() if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        skip = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        return self.body(x) + self.shortcut(skip)


def encoder_stage(cin: int, cout: int, blocks: int, stride: int, residual: str,
                  group_width: int | None = GROUP_WIDTH) -> nn.Sequential:
    """One encoder stage of ``blocks`` bottlenecks; ``residual`` is ``"zero_init"`` (post-activation,
    last BN scale 0), ``"plain"`` (post-activation, default init: unstable in bf16, kept for the
    ablation) or ``"preact"`` (pre-activation units, then BN-ReLU)."""
    if residual == "preact":
        units = [PreActResNeXtBlock(cin, cout, stride=stride, group_width=group_width, first=True)]
        units += [PreActResNeXtBlock(cout, cout, group_width=group_width) for _ in range(blocks - 1)]
        return nn.Sequential(*units, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
    zero = residual == "zero_init"
    units = [ResNeXtBlock(cin, cout, stride=stride, group_width=group_width, zero_init_residual=zero)]
    units += [ResNeXtBlock(cout, cout, group_width=group_width, zero_init_residual=zero) for _ in range(blocks - 1)]
    return nn.Sequential(*units)


RESIDUALS = ("zero_init", "plain", "preact")


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
    """Bilinear samples of (B, C, H, W) at (B, N, 2) points (x, y) in [0, 1] -> (B, C, N), computed in
    at least fp32."""
    dtype = torch.promote_types(features.dtype, torch.float32)  # never sample at bf16 coordinates
    grid = (2.0 * coords.to(dtype) - 1.0).unsqueeze(2)  # (B, N, 1, 2)
    with torch.autocast(features.device.type, enabled=False):
        return F.grid_sample(features.to(dtype), grid, mode="bilinear", align_corners=False).squeeze(3)


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
    """The bilateral spatial attention network (module docstring).

    Args:
        in_channels, num_classes: image channels and output classes.
        size: ``"paper"`` or ``"small"`` (:data:`SIZES`).
        render: the attention rendering module (point head); ``False`` for the ablation.
        swin_weights: a local safetensors file for the ISAM Swin blocks (:func:`load_swin_into`).
        train_points, oversample, importance: PointRend's training point sampling.
        subdivision_points: pixels re-predicted per rendering step at inference.
        residual: ``"zero_init"`` (shipped), ``"plain"`` or ``"preact"`` blocks (:func:`encoder_stage`).
        group_width: channels per group of the grouped 3x3 (None: the first design's cardinality 8).
        decoder: ``"full"`` (U-shaped to full resolution) or ``"stride4"`` (the first design).
        norm: ``"batch"`` (ResNeXt's BN, shipped) or ``"instance"``: every BN becomes an affine
            InstanceNorm with the same initial scale and shift (:func:`use_instance_norm`) **(our choice)**.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, size: str = "small", render: bool = True,
                 swin_weights: str | Path | None = None, train_points: int = 1024, oversample: int = 3,
                 importance: float = 0.75, subdivision_points: int = 4096, residual: str = "zero_init",
                 group_width: int | None = GROUP_WIDTH, decoder: str = "full", norm: str = "batch"):
        super().__init__()
        if norm not in NORMS:
            raise InvalidInput(f"bilateral: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if residual not in RESIDUALS:
            raise InvalidInput(f"bilateral: residual must be one of {', '.join(RESIDUALS)}, got {residual!r}")
        if decoder not in DECODERS:
            raise InvalidInput(f"bilateral: decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        if group_width is not None and int(group_width) < 1:
            raise InvalidInput(f"bilateral: group_width must be a positive number of channels, got {group_width!r}")
        self.residual, self.decoder = residual, decoder
        cfg = SIZES[size]
        w0, w1, w2, w3, w4 = cfg["widths"]
        self.in_channels, self.num_classes, self.render = in_channels, num_classes, render
        self.train_points, self.oversample, self.importance = train_points, oversample, importance
        self.subdivision_points = subdivision_points
        # rendering steps at inference: one at full resolution, or one per x2 from stride 4
        self.subdivision_steps = 1 if decoder == "full" else 2
        stages, cin = [], in_channels
        for i, (w, n) in enumerate(zip(cfg["widths"], cfg["blocks"])):
            stages.append(encoder_stage(cin, w, n, stride=1 if i == 0 else 2, residual=residual,
                                        group_width=group_width))
            cin = w
        self.encoder = nn.ModuleList(stages)
        self.isam = ISAM(w4, cfg["heads"])
        self.fsam = FSAM(w4)
        self.up3, self.up2 = UpBlock(w4, w3, w3), UpBlock(w3, w2, w2)
        if decoder == "full":
            self.up1, self.up0 = UpBlock(w2, w1, w1), UpBlock(w1, w0, w0)
        self.coarse_head = nn.Conv2d(w0 if decoder == "full" else w2, num_classes, 1)
        self.point_head = PointHead(w0 + w1, num_classes, cfg["point_hidden"]) if render else None
        self.norm = norm
        if norm == "instance":
            use_instance_norm(self)
        if swin_weights is not None:
            self.load_swin_weights(swin_weights)

    def load_swin_weights(self, path: str | Path, stage: int | None = None) -> dict:
        """Initialise the ISAM Swin blocks from a local safetensors file; see :func:`load_swin_into`."""
        return load_swin_into(self.isam.swin, path, stage=stage)

    def forward(self, x: torch.Tensor):
        check_input(x, name="bilateral", in_channels=self.in_channels, multiple=MULTIPLES["bilateral"])
        feats = []
        for stage in self.encoder:
            x = stage(x)
            feats.append(x)
        f0, f1 = feats[:2]
        d = self.up2(self.up3(self.fsam(self.isam(feats[4])), feats[3]), feats[2])
        if self.decoder == "full":
            d = self.up0(self.up1(d, f1), f0)
        coarse = self.coarse_head(d)  # full resolution, or stride 4 with decoder="stride4"
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
        """Importance sampling (PointRend Sec. 3.1): ``oversample * N`` random candidates, the
        ``importance * N`` most uncertain of them plus uniform ones. Coordinates are drawn and kept in
        fp32 whatever the autocast dtype (in bf16 a [0, 1) coordinate has only 256 values)."""
        b, n = coarse.shape[0], self.train_points
        with torch.autocast(coarse.device.type, enabled=False):
            candidates = torch.rand(b, n * self.oversample, 2, device=coarse.device, dtype=torch.float32)
            unc = uncertainty(point_sample(coarse.detach().float(), candidates))[:, 0]  # (B, kN)
            n_imp = int(self.importance * n)
            idx = torch.topk(unc, n_imp, dim=1).indices
            chosen = torch.gather(candidates, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
            rest = torch.rand(b, n - n_imp, 2, device=coarse.device, dtype=torch.float32)
        return torch.cat([chosen, rest], dim=1)

    def _refine(self, coarse, f0, f1):
        """Inference (PointRend Sec. 3.1, detectron2's ``subdivision_inference``): upsample x2, pick the
        most uncertain pixels of the current map, and re-predict them with the point head from the fine
        features and the *original coarse* logits sampled there (what the head was trained on), until
        full resolution."""
        out_h = f0.shape[-2]
        if coarse.shape[-2] >= out_h:  # U-shaped decoder: one rendering step at full resolution
            return self._repredict(coarse, coarse, f0, f1)
        logits = coarse
        while logits.shape[-2] < out_h:
            logits = F.interpolate(logits, scale_factor=2.0, mode="bilinear", align_corners=False)
            logits = self._repredict(logits, coarse, f0, f1)
        return logits

    def _repredict(self, logits, coarse, f0, f1):
        """``logits`` with its most uncertain pixels re-predicted by the point head."""
        b, k, h, w = logits.shape
        n = min(self.subdivision_points, h * w // 4)  # the most uncertain quarter at most **(our choice)**
        idx = torch.topk(uncertainty(logits).flatten(1), n, dim=1).indices  # (B, N)
        ys = torch.div(idx, w, rounding_mode="floor")
        xs = idx - ys * w
        coords = torch.stack([(xs.float() + 0.5) / w, (ys.float() + 0.5) / h], dim=-1)  # fp32 always
        point_logits = self.point_head(self._fine(f0, f1, coords), point_sample(coarse, coords))
        return logits.flatten(2).scatter(2, idx.unsqueeze(1).expand(-1, k, -1),
                                         point_logits.to(logits.dtype)).view(b, k, h, w)


def use_instance_norm(module: nn.Module) -> int:
    """Replace every ``BatchNorm2d`` under ``module`` by an affine ``InstanceNorm2d`` (no running statistics:
    each image is normalised by its own, in training and inference alike) with the BN's initial scale and
    shift, so that zero-initialised residual scales stay zero. Returns how many were replaced.

    **Our choice**: the U-Net baseline normalises per instance (MONAI's ``BasicUNet``); with batch statistics
    the bilateral network fit its training images worse in our short runs, while at full budget (one seed)
    validation rose and test Dice fell, so BatchNorm stays the default (docs/results.md)."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            inst = nn.InstanceNorm2d(child.num_features, eps=child.eps, affine=True)
            with torch.no_grad():
                inst.weight.copy_(child.weight)
                inst.bias.copy_(child.bias)
            setattr(module, name, inst)
            count += 1
        else:
            count += use_instance_norm(child)
    return count


def point_targets(target: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Labels (B, H, W) or (B, 1, H, W) sampled (nearest) at (B, N, 2) points -> (B, N)."""
    t = target if target.ndim == 4 else target.unsqueeze(1)
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(torch.float32)
    return F.grid_sample(t.to(torch.float32), grid, mode="nearest", align_corners=False)[:, 0, :, 0]


def point_loss(outputs: dict, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the point head at the training points (BCE for a one-channel head; for two
    classes CE equals BCE on the logit difference). Computed in at least fp32."""
    logits, coords = outputs["point_logits"], outputs["point_coords"]
    logits = logits if logits.dtype == torch.float64 else logits.float()
    labels = point_targets(target, coords)
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype))
    return F.cross_entropy(logits, labels.long())


# ---------------------------------------------------------------- Swin transfer (ImageNet -> ISAM)

_SWIN_BLOCK_KEY = re.compile(r"^(?:.*\.)?(?:layers|stages)\.(\d+)\.blocks\.(\d+)\.(.+)$")
_OWN_BLOCK_KEY = re.compile(r"^(?:.*\.)?blocks\.(\d+)\.(.+)$")
_RENAME = {"mlp.fc1.": "mlp.linear1.", "mlp.fc2.": "mlp.linear2."}  # timm / Microsoft -> MONAI names
_SKIP = ("relative_position_index", "attn_mask")  # buffers our blocks compute themselves


def resize_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """A Swin relative-position bias table ((2w'-1)^2, heads) resized to window ``window`` by bicubic
    interpolation of its (2w'-1) x (2w'-1) grid, as Swin does to fine-tune at another window size."""
    rows, heads = table.shape
    side = int(round(rows ** 0.5))
    if side * side != rows:
        raise InvalidInput(f"a relative-position table of {rows} rows is not square")
    new = 2 * window - 1
    if side == new:
        return table
    grid = table.t().reshape(1, heads, side, side).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return grid.reshape(heads, new * new).t().to(table.dtype).contiguous()


def load_swin_into(layer: nn.Module, path: str | Path, stage: int | None = None) -> dict:
    """Initialise MONAI Swin blocks (``layer.blocks``, as in :class:`ISAM`) from a local safetensors file.

    Two kinds of file are understood:

    * an ImageNet Swin checkpoint converted to safetensors with the Microsoft/timm key names
      (``layers.S.blocks.B.attn.qkv.weight``, ``mlp.fc1``...). The stage is chosen explicitly
      (``stage``) or as the one whose width equals the ISAM width (Swin-T: stage 1 has width 192, the
      paper-size ISAM's). A stage with fewer blocks than ISAM's six is repeated in order (Swin-T stage 1
      has 2: blocks 0, 1, 0, 1, 0, 1), which keeps the window / shifted-window alternation **(our
      choice)**. ``mlp.fc1/fc2`` become MONAI's ``mlp.linear1/linear2``; relative-position bias tables of
      another window (7 -> 169 rows) are resized bicubically to ours (8 -> 225 rows);
    * a file with our own keys (``blocks.B....``, optionally prefixed), e.g. saved from another ISAM.

    Every tensor of the blocks must be found and match in shape, otherwise nothing is loaded and a
    ``ValueError`` names the first problem. Returns ``{"stage": S or None, "source_blocks": [...],
    "loaded": n_tensors}``.
    """
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    own = {k: v for k, v in layer.state_dict().items() if not k.endswith(_SKIP)}
    n_blocks = len(layer.blocks)
    window = layer.blocks[0].window_size[0]
    stages = _swin_stages(tensors)
    if stages:
        stage, order, picked = _pick_from_stage(stages, own, n_blocks, window, path, stage)
        layer.load_state_dict(picked, strict=False)
        return {"stage": stage, "source_blocks": order, "loaded": len(picked)}
    picked = _pick_own_keys(tensors, own, window, path)
    layer.load_state_dict(picked, strict=False)
    return {"stage": None, "source_blocks": list(range(n_blocks)), "loaded": len(picked)}


def _swin_stages(tensors: dict) -> dict[int, dict[int, dict[str, torch.Tensor]]]:
    """stage -> block -> tensors under MONAI's names, from Microsoft/timm Swin keys (empty: none there)."""
    stages: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in tensors.items():
        m = _SWIN_BLOCK_KEY.match(key)
        if m and not key.endswith(_SKIP):
            rest = m.group(3)
            for a, b in _RENAME.items():
                rest = rest.replace(a, b)
            stages.setdefault(int(m.group(1)), {}).setdefault(int(m.group(2)), {})[rest] = value
    return stages


def _pick_from_stage(stages, own: dict, n_blocks: int, window: int, path, stage: int | None):
    """(stage, source block per ISAM block, tensors for ISAM) from an ImageNet Swin file (see
    :func:`load_swin_into`)."""
    dims = {s: blocks[0]["norm1.weight"].shape[0] for s, blocks in stages.items() if "norm1.weight" in blocks.get(0, {})}
    want = own["blocks.0.norm1.weight"].shape[0]
    if stage is None:
        fits = [s for s, d in sorted(dims.items()) if d == want]
        if not fits:
            raise InvalidInput(f"{path}: no Swin stage has width {want} (stage widths: {dims}); "
                               "pass stage= or use a model size whose ISAM width matches")
        stage = fits[0]
    if stage not in stages:
        raise InvalidInput(f"{path}: no stage {stage} in the file (stages: {sorted(stages)})")
    src_blocks = stages[stage]
    n_src = len(src_blocks)
    if n_src < n_blocks and n_src % 2:
        raise InvalidInput(f"{path}: stage {stage} has {n_src} blocks; repeating an odd number would break "
                           "the window / shifted-window alternation")
    order = [b % n_src for b in range(n_blocks)]
    picked = {}
    for key, ref in own.items():
        b, rest = key.split(".", 2)[1:]
        src = src_blocks[order[int(b)]].get(rest)
        if src is None:
            raise InvalidInput(f"{path}: layers.{stage}.blocks.{order[int(b)]}.{rest} is missing")
        if rest.endswith("relative_position_bias_table"):
            src = resize_bias_table(src, window)
        if src.shape != ref.shape:
            raise InvalidInput(f"{path}: layers.{stage}.blocks.{order[int(b)]}.{rest} has shape "
                               f"{tuple(src.shape)}, ISAM expects {tuple(ref.shape)}")
        picked[key] = src.to(ref.dtype)
    return stage, order, picked


def _pick_own_keys(tensors: dict, own: dict, window: int, path) -> dict:
    """Tensors for ISAM from a file with our own keys (``blocks.B....``, optionally prefixed)."""
    picked = {}
    for key, value in tensors.items():
        m = _OWN_BLOCK_KEY.match(key)
        if m:
            name = f"blocks.{m.group(1)}.{m.group(2)}"
            if name in own:
                if name.endswith("relative_position_bias_table"):
                    value = resize_bias_table(value, window)
                if value.shape != own[name].shape:
                    raise InvalidInput(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}")
                picked[name] = value.to(own[name].dtype)
    missing = [k for k in own if k not in picked]
    if not picked:
        raise InvalidInput(f"{path}: no Swin block weights found (expected keys like 'layers.1.blocks.0.attn.qkv.weight' "
                           "or 'blocks.0.attn.qkv.weight')")
    if missing:
        raise InvalidInput(f"{path}: {len(missing)} ISAM tensor(s) not in the file (e.g. {missing[0]})")
    return picked
