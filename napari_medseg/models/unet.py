"""The baseline: MONAI's ``BasicUNet`` in 2D (Ronneberger et al. 2015, as implemented by MONAI).

Parameters (3 channels, 1 class): ``paper`` features (32, 32, 64, 128, 256, 32) 1.98 M; ``small``
(10, 10, 20, 40, 80, 10) 0.19 M, about a tenth of the FLOPs.
"""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from .checks import check_input
from .multiples import MULTIPLES

SIZES = {"paper": (32, 32, 64, 128, 256, 32), "small": (10, 10, 20, 40, 80, 10)}


class UNetBaseline(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 1, size: str = "small",
                 features: tuple[int, ...] | None = None):
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.net = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                             features=tuple(features or SIZES[size]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, name="unet", in_channels=self.in_channels, multiple=MULTIPLES["unet"])
        return self.net(x)
