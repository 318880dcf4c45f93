"""LSTMSA: self-attention embedded in a ConvLSTM, as a 2.5D segmentation head.

Ye et al., "LSTMSA: a novel approach for 2.5D medical image segmentation with self-attention
embedded LSTM", IEEE TNNLS (Fig. 2 and Eqs. 1-6). Reference: yeshunlong/LSTMSA ``LSTMSA.py``.

* A U-shaped backbone with shared weights (MONAI ``BasicUNet``; the paper used MT-UNet) maps each of
  the slices z-1, z, z+1 to a ``hidden``-channel full-resolution feature map.
* A forward cell reads ``[f(z-1), f(z)]``; a reverse cell with its own weights reads ``[f(z+1), f(z)]``;
  their last hidden states are concatenated and a 1x1 conv gives the class logits.
* The cell (``SACell``, C channels, 5x5 gates), with states flattened to (B, C, HW):
  1. channel attention ``E = softmax(x h^T / sqrt(HW))`` (C x C), ``A = E x`` (Eq. 1, no projections);
  2. ``F = ReLU(Linear_{2C->C}([h; A]))`` per pixel (Eq. 2);
  3. ``S = sigmoid(Dropout_{0.1}(F + PE))`` with a 1-D sinusoidal table over the pixel index (Eq. 3);
  4. gates ``[i, f, o, g] = Conv5x5([x; h])`` (Eq. 4);
  5. ``c' = f*c + S``; ``h' = o*tanh(c') + i*g + S`` (Eqs. 5-6).
* Ablations (the paper's claim is that the head improves its backbone): ``cell="convlstm"`` replaces
  the cell by a plain ConvLSTM; ``cell="none"`` drops the recurrent head: a 1x1 conv on the middle
  slice's backbone features (the backbone alone).

Input: (B, C, H, W) for a single slice (used as z-1 = z = z+1) or (B, 3, C, H, W) for 2.5D.
Parameters: head ``paper`` (C=64) 1.66 M (+ 1x1 classifier), backbone ``paper`` BasicUNet
(32, 32, 64, 128, 256, 64) 2.03 M; ``small`` (C=20): head 0.16 M, backbone (8, 8, 16, 32, 64, 20) 0.13 M.
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from ..io.errors import InvalidInput
from .checks import check_input
from .multiples import MULTIPLES
from .convlstm import ConvLSTMCell, run_sequence

SIZES = {
    "paper": {"hidden": 64, "backbone": (32, 32, 64, 128, 256, 64)},
    "small": {"hidden": 20, "backbone": (8, 8, 16, 32, 64, 20)},
}


def sinusoidal_table(length: int, channels: int, device=None, dtype=None) -> torch.Tensor:
    """Transformer position encoding over ``length`` positions, shaped (channels, length)."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, channels, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / channels))
    pe = torch.zeros(length, channels, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: channels // 2])
    return pe.t().to(dtype or torch.float32)


class SACell(ConvLSTMCell):
    """The LSTMSA cell (TNNLS): ConvLSTM gates plus a self-attention term S added to c and h."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 5, dropout: float = 0.1):
        if in_channels != hidden_channels:
            raise InvalidInput("the LSTMSA cell attends x against h: input and hidden channels must match")
        super().__init__(in_channels, hidden_channels, kernel_size)
        self.fuse = nn.Conv2d(2 * hidden_channels, hidden_channels, 1)  # Linear_{2C->C} per pixel, no transposes
        self.dropout = nn.Dropout(dropout)
        self._pe_cache: dict = {}

    def position_table(self, hh: int, ww: int, ref: torch.Tensor) -> torch.Tensor:
        key = (hh, ww, ref.device, ref.dtype)
        if key not in self._pe_cache:
            table = sinusoidal_table(hh * ww, self.hidden_channels, ref.device, ref.dtype)
            self._pe_cache = {key: table.reshape(self.hidden_channels, hh, ww)}
        return self._pe_cache[key]

    def attention_term(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        hh, ww = x.shape[-2:]
        xf, hf = x.flatten(2), h.flatten(2)  # (B, C, HW)
        energy = torch.softmax(torch.bmm(xf, hf.transpose(1, 2)) / math.sqrt(hh * ww), dim=-1)  # (B, C, C)
        attended = torch.bmm(energy, xf).reshape_as(x)  # shaped like x (an exported graph keeps the batch free)
        fused = torch.relu(self.fuse(torch.cat([h, attended], dim=1)))
        return torch.sigmoid(self.dropout(fused + self.position_table(hh, ww, fused)))

    def forward(self, x, state=None):
        if state is None:  # h = c = 0: the gate convolution needs only its input half
            # h = 0 computed from x, so that an exported (traced) graph keeps its batch size free: a zeros
            # tensor of x's shape is folded into a constant of the traced batch size
            h0 = (x[:, :1] * 0).expand(-1, self.hidden_channels, -1, -1)
            s = self.attention_term(x, h0)
            i, _f, o, g = self.gate_activations(x)
            c = s
        else:
            h, c = state
            s = self.attention_term(x, h)
            i, f, o, g = self.gate_activations(x, h)
            c = f * c + s
        h = o * torch.tanh(c) + i * g + s
        return h, c


class LSTMSA(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 4, size: str = "small", cell: str = "lstmsa",
                 hidden: int | None = None, backbone_features: tuple[int, ...] | None = None, kernel_size: int = 5):
        super().__init__()
        cfg = SIZES[size]
        hidden = hidden or cfg["hidden"]
        feats = tuple(backbone_features or cfg["backbone"])
        self.in_channels, self.num_classes, self.hidden = in_channels, num_classes, hidden
        self.backbone = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=hidden, features=feats)
        if cell not in ("lstmsa", "convlstm", "none"):
            raise InvalidInput(f"cell must be 'lstmsa', 'convlstm' or 'none', got {cell!r}")
        self.cell = cell
        if cell == "none":
            self.forward_cell = self.reverse_cell = None
            self.classifier = nn.Conv2d(hidden, num_classes, 1)
        else:
            cell_cls = {"lstmsa": SACell, "convlstm": ConvLSTMCell}[cell]
            self.forward_cell = cell_cls(hidden, hidden, kernel_size)
            self.reverse_cell = cell_cls(hidden, hidden, kernel_size)
            self.classifier = nn.Conv2d(2 * hidden, num_classes, 1)

    def head_parameters(self) -> int:
        return sum(p.numel() for m in (self.forward_cell, self.reverse_cell, self.classifier) if m is not None
                   for p in m.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, name="LSTMSA", in_channels=self.in_channels, multiple=MULTIPLES["lstmsa"], ndims=(4, 5))
        if self.cell == "none":  # backbone alone: the middle slice only
            return self.classifier(self.backbone(x[:, x.shape[1] // 2] if x.ndim == 5 else x))
        if x.ndim == 5:
            if x.shape[1] != 3:
                raise InvalidInput(f"LSTMSA: 2.5D input needs 3 neighbouring slices (B, 3, C, H, W), got {tuple(x.shape)}")
            f = self.backbone(x.flatten(0, 1)).unflatten(0, (-1, 3))  # one batched backbone pass
            prev, mid, nxt = f[:, 0], f[:, 1], f[:, 2]
        else:
            prev = mid = nxt = self.backbone(x)
        h_fwd = run_sequence(self.forward_cell, torch.stack([prev, mid], dim=1))
        h_rev = run_sequence(self.reverse_cell, torch.stack([nxt, mid], dim=1))
        return self.classifier(torch.cat([h_fwd, h_rev], dim=1))
