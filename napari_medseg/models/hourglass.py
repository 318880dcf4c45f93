"""Stacked hourglass with multi-level attention for intervertebral disc labeling.

Azad et al., "Stacked Hourglass Network with a Multi-level Attention Mechanism: Where to Look for
Intervertebral Disc Labeling", MLMI 2021 (Fig. 1). Hourglass: Newell et al., ECCV 2016. Reference:
rezazad68/Deep-Intervertebral-Disc-Labeling ``pose_code/atthourglass.py``.

* Stem: 7x7 conv stride 2 -> BN -> ReLU, pre-activation bottlenecks, 2x2 max-pool: 256 channels at a
  quarter of the input size.
* ``num_stacks`` hourglasses of depth 4; between stacks ``x += 1x1(features) + 1x1(scores)``.
* Multi-level attention (Sec. 2.2): all stacks' features concatenated -> 1x1 conv-BN-ReLU to 128, 16, 8
  -> 1x1 to 1 -> sigmoid; the map multiplies the last stack's features before its score layer.
* Heatmaps (one channel per disc) are upsampled x4 to the input size.

``forward`` returns the last stack's heatmaps (B, K, H, W); in training mode it returns a dict with
``"heatmaps"`` and ``"stack_heatmaps"`` (B, S, K, H, W) for the per-stack loss.
Parameters (3 channels, 11 discs): ``paper`` 6.60 M with attention, 6.53 M without; ``small`` 0.66 M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..io.errors import InvalidInput
from .checks import check_input

SIZES = {"paper": {"stem": 64, "feats": 128}, "small": {"stem": 20, "feats": 40}}


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (x2 channels), identity or 1x1 shortcut."""

    def __init__(self, cin: int, planes: int, zero_init_residual: bool = False):
        super().__init__()
        cout = 2 * planes
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, planes, 1),
            nn.BatchNorm2d(planes), nn.ReLU(inplace=True), nn.Conv2d(planes, planes, 3, padding=1),
            nn.BatchNorm2d(planes), nn.ReLU(inplace=True), nn.Conv2d(planes, cout, 1),
        )
        self.shortcut = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        if zero_init_residual and cin == cout:
            nn.init.zeros_(self.body[-1].weight)
            nn.init.zeros_(self.body[-1].bias)

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class Hourglass(nn.Module):
    """Recursive hourglass: skip branch at this scale + pooled branch recursing ``depth`` times."""

    def __init__(self, channels: int, depth: int = 4):
        super().__init__()
        planes = channels // 2
        self.skip = PreActBottleneck(channels, planes)
        self.down = PreActBottleneck(channels, planes)
        self.inner = Hourglass(channels, depth - 1) if depth > 1 else PreActBottleneck(channels, planes)
        self.up = PreActBottleneck(channels, planes)

    def forward(self, x):
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2))))
        return self.skip(x) + F.interpolate(low, scale_factor=2.0, mode="nearest")


def conv_bn_relu(cin: int, cout: int, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AttentionHourglass(nn.Module):
    def __init__(self, in_channels: int = 3, num_discs: int = 11, size: str = "small", num_stacks: int = 2,
                 attention: bool = True, depth: int = 4):
        super().__init__()
        if num_stacks < 1 or num_discs < 1:
            raise InvalidInput("num_stacks and num_discs must be at least 1")
        stem, feats = SIZES[size]["stem"], SIZES[size]["feats"]
        ch = 2 * feats
        self.in_channels, self.num_classes, self.num_stacks, self.depth = in_channels, num_discs, num_stacks, depth
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 7, stride=2, padding=3), nn.BatchNorm2d(stem), nn.ReLU(inplace=True),
            PreActBottleneck(stem, stem), nn.MaxPool2d(2),
            PreActBottleneck(2 * stem, 2 * stem), PreActBottleneck(4 * stem, feats),
        )
        self.hourglasses = nn.ModuleList(Hourglass(ch, depth) for _ in range(num_stacks))
        self.res = nn.ModuleList(PreActBottleneck(ch, feats) for _ in range(num_stacks))
        self.fc = nn.ModuleList(conv_bn_relu(ch, ch) for _ in range(num_stacks))
        self.score = nn.ModuleList(nn.Conv2d(ch, num_discs, 1) for _ in range(num_stacks))
        self.fc_back = nn.ModuleList(nn.Conv2d(ch, ch, 1) for _ in range(num_stacks - 1))
        self.score_back = nn.ModuleList(nn.Conv2d(num_discs, ch, 1) for _ in range(num_stacks - 1))
        self.attention = nn.Sequential(
            conv_bn_relu(num_stacks * ch, feats, bias=False), conv_bn_relu(feats, 16, bias=False),
            conv_bn_relu(16, 8, bias=False), nn.Conv2d(8, 1, 1, bias=False), nn.Sigmoid(),
        ) if attention else None

    def forward(self, x: torch.Tensor):
        # the stem halves twice, each hourglass level once more: ModelInfo.multiple (64) is this at the default
        # depth 4 (tests/test_models.py::test_size_multiples_are_the_registry_s)
        check_input(x, name="hourglass", in_channels=self.in_channels, multiple=4 * 2**self.depth)
        x = self.stem(x)
        scores, features = [], []
        for i in range(self.num_stacks):
            y = self.fc[i](self.res[i](self.hourglasses[i](x)))
            features.append(y)
            if i < self.num_stacks - 1:
                score = self.score[i](y)
                scores.append(score)
                x = x + self.fc_back[i](y) + self.score_back[i](score)
        if self.attention is not None:
            y = y * self.attention(torch.cat(features, dim=1))
        scores.append(self.score[-1](y))
        heatmaps = [F.interpolate(s, scale_factor=4.0, mode="bilinear", align_corners=False) for s in scores]
        if self.training:
            return {"heatmaps": heatmaps[-1], "stack_heatmaps": torch.stack(heatmaps, dim=1)}
        return heatmaps[-1]
