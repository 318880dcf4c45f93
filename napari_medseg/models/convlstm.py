"""Convolutional LSTM shared by BCDU-Net and LSTMSA.

No maintained library ships one (torch, torchvision and MONAI have none), so it is written here:
Shi et al., "Convolutional LSTM Network" (NeurIPS 2015), eq. 3 without peepholes. One convolution
over ``[x, h]`` produces all four gates at once; ``c' = f*c + i*g``, ``h' = o*tanh(c')``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ..io.errors import InvalidInput

DIRECTIONS = ("forward", "reverse", "bidirectional")


class ConvLSTMCell(nn.Module):
    """One step. Gates ``[i, f, o, g]`` come from a single ``k x k`` convolution over ``[x, h]``."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size,
                               padding=kernel_size // 2, bias=bias)

    def gate_activations(self, x, h=None):
        """``[i, f, o, g]`` from one convolution. With ``h=None`` (the zero initial state) only the
        input half of the kernel is applied: the same result for half the work."""
        if h is None:
            pre = F.conv2d(x, self.gates.weight[:, : x.shape[1]], self.gates.bias, padding=self.gates.padding)
        else:
            pre = self.gates(torch.cat([x, h], dim=1))
        i, f, o, g = torch.chunk(pre, 4, dim=1)
        return torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        if state is None:  # first step: h = c = 0
            i, _f, o, g = self.gate_activations(x)
            c = i * g
        else:
            h, c = state
            i, f, o, g = self.gate_activations(x, h)
            c = f * c + i * g
        return o * torch.tanh(c), c


def run_sequence(cell: nn.Module, seq: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Feed ``seq`` of shape (B, T, C, H, W) through ``cell``; return the last hidden state."""
    steps = range(seq.shape[1] - 1, -1, -1) if reverse else range(seq.shape[1])
    state = None
    for t in steps:
        state = cell(seq[:, t], state)
    return state[0]


class ConvLSTM(nn.Module):
    """A ConvLSTM layer over a short sequence, returning the last hidden state.

    ``direction``: ``"forward"`` reads t = 0..T-1; ``"reverse"`` reads T-1..0 (what BCDU-Net's Keras
    reference does with ``go_backwards=True``); ``"bidirectional"`` runs a forward and a backward cell
    with their own weights and sums their last hidden states.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3,
                 direction: str = "bidirectional", cell: type[nn.Module] = ConvLSTMCell):
        super().__init__()
        if direction not in DIRECTIONS:
            raise InvalidInput(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.direction = direction
        self.cell = cell(in_channels, hidden_channels, kernel_size)
        self.cell_backward = cell(in_channels, hidden_channels, kernel_size) if direction == "bidirectional" else None

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        if seq.ndim != 5:
            raise InvalidInput(f"ConvLSTM expects (B, T, C, H, W), got shape {tuple(seq.shape)}")
        if self.direction == "forward":
            return run_sequence(self.cell, seq)
        if self.direction == "reverse":
            return run_sequence(self.cell, seq, reverse=True)
        return run_sequence(self.cell, seq) + run_sequence(self.cell_backward, seq, reverse=True)
