"""BCDU-Net: bi-directional ConvLSTM U-Net with densely connected convolutions.

Azad, Asadi-Aghbolaghi, Fathy, Escalera, "Bi-Directional ConvLSTM U-Net with Densley Connected
Convolutions", ICCV Workshops 2019 (Fig. 1). Reference (Keras): rezazad68/BCDU-Net, ``models.py``.

* Encoder (Fig. 1, left): two 3x3 conv + ReLU per level (no BN), 2x2 max-pool. As the reference,
  the third level is pooled *un-dropped* and dropout 0.5 acts on its skip connection only.
* Bottleneck (Fig. 1 bottom, Sec. 3.2): densely connected blocks, ``D1 = conv(x)``, ``D2 = conv(D1)``,
  ``D3 = conv([D2, D1])``, dropout after each; ``dense_blocks=1`` keeps D1 only.
* Dropout drops single elements (Keras ``Dropout``), not whole channels.
* Initialisation as the reference (:func:`reference_init`): He-normal for every convolution, the
  last 1x1 conv Glorot-uniform, ConvLSTM forget-gate bias 1. The network
  has no normalisation before the decoder, so PyTorch's default init (Kaiming-uniform with a=sqrt(5))
  shrank the activations 10x by the bottleneck.
* Input (reference ``dataset_normalized``): z-score, then min-max per image (the ``zscore+minmax``
  preprocessing recorded in the checkpoint). The reference z-scores with dataset-wide statistics, which a
  per-image min-max makes irrelevant, and scales the result to 0-255; we keep [0, 1] **(our choice)**.
* Training (engine recipe ``bcdunet``): BCE, Adam 1e-4, learning rate x0.1 when the *validation loss*
  has not improved by 1e-4 for 7 epochs (the reference's ``ReduceLROnPlateau(monitor='val_loss')``). The
  reference keeps the checkpoint with the lowest validation loss; our trainer keeps the best validation
  Dice **(our choice)**.
* Decoder (Sec. 3.3): 2x2 transposed conv -> BN -> ReLU; ``[skip, up]`` as a 2-step sequence into a
  ConvLSTM with skip/2 filters; its last state -> two 3x3 conv + ReLU.
* Head: 3x3 conv -> 2 channels, ReLU, 1x1 conv -> classes (logits; sigmoid/softmax in the loss).

Parameters (3 input channels, 1 class), ``paper`` size: reference direction (one ConvLSTM cell per
level, the published configuration) d=3 20.66 M, d=1 8.86 M (the paper's 20.7 M / 8.9 M); the default
true bidirectional variant adds a backward cell per level: d=3 22.98 M, d=1 11.19 M. ``small``
(widths 20-160, about a tenth of the FLOPs): 2.25 M bidirectional.
"""

from __future__ import annotations

import torch
from torch import nn

from ..io.errors import InvalidInput
from .checks import check_input
from .multiples import MULTIPLES
from .convlstm import ConvLSTM

WIDTHS = {"paper": (64, 128, 256, 512), "small": (20, 40, 80, 160)}


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
    )


class DenseBottleneck(nn.Module):
    """Densely connected convolutions at the deepest level (Sec. 3.2)."""

    def __init__(self, cin: int, width: int, dense_blocks: int = 3, dropout: float = 0.5):
        super().__init__()
        if dense_blocks not in (1, 3):
            raise InvalidInput(f"dense_blocks must be 1 or 3, got {dense_blocks}")
        self.dense_blocks = dense_blocks
        self.d1 = double_conv(cin, width)
        if dense_blocks == 3:
            self.d2 = double_conv(width, width)
            self.d3 = double_conv(2 * width, width)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x):
        d1 = self.drop(self.d1(x))
        if self.dense_blocks == 1:
            return d1
        d2 = self.drop(self.d2(d1))
        return self.drop(self.d3(torch.cat([d2, d1], dim=1)))


class LSTMUp(nn.Module):
    """Decoder level: transposed conv up, ConvLSTM over [skip, up], two convs (Sec. 3.3)."""

    def __init__(self, cin: int, skip: int, direction: str):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(cin, skip, 2, stride=2), nn.BatchNorm2d(skip), nn.ReLU(inplace=True))
        self.lstm = ConvLSTM(skip, skip // 2, kernel_size=3, direction=direction)
        self.conv = double_conv(skip // 2, skip)

    def forward(self, x, skip):
        seq = torch.stack([skip, self.up(x)], dim=1)  # (B, 2, C, H, W): skip first, as the reference
        return self.conv(self.lstm(seq))


class BCDUNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 1, size: str = "small", dense_blocks: int = 3,
                 direction: str = "bidirectional", widths: tuple[int, int, int, int] | None = None,
                 dropout: float = 0.5):
        super().__init__()
        w1, w2, w3, w4 = widths or WIDTHS[size]
        self.in_channels, self.num_classes = in_channels, num_classes
        self.enc1, self.enc2, self.enc3 = double_conv(in_channels, w1), double_conv(w1, w2), double_conv(w2, w3)
        self.drop3 = nn.Dropout(dropout) if dropout else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DenseBottleneck(w3, w4, dense_blocks, dropout)
        self.up3, self.up2, self.up1 = LSTMUp(w4, w3, direction), LSTMUp(w3, w2, direction), LSTMUp(w2, w1, direction)
        self.head = nn.Sequential(nn.Conv2d(w1, 2, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(2, num_classes, 1))
        reference_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, name="BCDU-Net", in_channels=self.in_channels, multiple=MULTIPLES["bcdunet"])
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        b = self.bottleneck(self.pool(e3))  # the reference pools the un-dropped e3 ...
        d3 = self.up3(b, self.drop3(e3))  # ... and drops only its skip
        d2 = self.up2(d3, e2)
        d1 = self.up1(d2, e1)
        return self.head(d1)


def reference_init(net: BCDUNet) -> None:
    """The Keras reference's initialisation. He-normal for every conv and transposed conv (Keras'
    ``VarianceScaling(2, fan_in, truncated_normal)``: a normal cut at 2 std whose std is
    sqrt(2 / fan_in) / 0.8796, zero bias); Glorot-uniform for the final 1x1 conv (Keras' default);
    ConvLSTM forget-gate biases 1 (``unit_forget_bias``). Our ConvLSTM has one kernel over ``[x, h]``:
    it is He-normal over the joint fan-in, where Keras uses an orthogonal recurrent kernel **(our
    choice)**."""
    from .convlstm import ConvLSTMCell

    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            k = m.weight[0, 0].numel()
            # Conv2d weight (out, in, k, k); ConvTranspose2d (in, out, k, k), where Keras' fan_in is out * k * k
            fan_in = m.weight.shape[1] * k
            std = (2.0 / fan_in) ** 0.5 / 0.87962566103423978
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    last = net.head[-1]
    nn.init.xavier_uniform_(last.weight)
    nn.init.zeros_(last.bias)
    for m in net.modules():
        if isinstance(m, ConvLSTMCell) and m.gates.bias is not None:
            hc = m.hidden_channels
            with torch.no_grad():
                m.gates.bias[hc: 2 * hc] = 1.0  # gates are [i, f, o, g]
