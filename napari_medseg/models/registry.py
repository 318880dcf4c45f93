"""Name -> network builder, with what each network expects and returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

from ..io.errors import InvalidInput
from .multiples import MULTIPLES

if TYPE_CHECKING:  # listing networks (`napari-medseg models`) must not import torch
    from torch import nn

SIZES = ("paper", "small")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    title: str
    task: str  # "segmentation" or "keypoints"
    input: str  # "2d" or "2d+2.5d"
    default_in_channels: int
    default_num_classes: int
    output: str  # "logits" or "heatmaps"
    multiple: int  # spatial sizes must be a multiple of this
    paper: str
    recipe: dict = field(default_factory=dict)  # the paper's training recipe (docs/models.md)
    # bf16 autocast is the "auto" training precision only where the network's bf16 + channels_last
    # gradient agrees with fp64 (cosine >= 0.99 on a real batch, at init and after a few steps;
    # tests/test_precision.py); elsewhere "auto" trains in fp32
    bf16_training: bool = True
    # 2D image normalisation the network was designed for (engine.preprocess.normalize); None: rgb01
    # for 8-bit images, minmax otherwise
    input_norm: str | None = None
    # parameter-name prefixes of the encoder, frozen by ``train --freeze encoder`` when fine-tuning
    encoder_prefixes: tuple[str, ...] = ()
    # parameter-name prefixes of the output heads; everything neither encoder nor head is "decoder"
    # (the groups of the gradient-fidelity check, engine/fidelity.py)
    head_prefixes: tuple[str, ...] = ()
    # training memory format per size, measured (benchmarks/engine.py --memory-format, docs/benchmarks.md):
    # the faster of channels_last and contiguous for a train step in the network's training precision
    memory_format: dict = field(default_factory=lambda: {"paper": "channels_last", "small": "channels_last"})
    # inference runtime on a CPU under ``--runtime auto`` (engine/runtime.py): "onnxruntime" only where
    # benchmarks/runtime.py measured it faster than eager fp32 with the same labels (2026-12-03, 2 threads,
    # bundled weights: U-Net 3.8x, bilateral 2.6x, BCDU-Net 2.0x, LSTMSA 2.0x, hourglass 5.1x; all 100 % of
    # labels identical, disc positions within 3e-5 voxels; docs/benchmarks.md)
    cpu_runtime: str = "torch"
    # the same choice on a CPU with AVX512-BF16/AMX, where eager would run bf16 under ``--precision auto``:
    # "onnxruntime" (fp32) only where benchmarks/runtime.py measured it faster than eager bf16 (2026-12-03,
    # quiet, 2 threads, batch 2: bilateral 31 vs 45 ms, hourglass 11 vs 27, U-Net 10-22 vs 12-21; not
    # BCDU-Net 65 vs 43, LSTMSA 121 vs 69; docs/benchmarks.md)
    bf16_cpu_runtime: str = "torch"

    def parameter_group(self, parameter: str) -> str:
        """``"encoder"``, ``"heads"`` or ``"decoder"`` for a parameter name of this network."""
        if parameter.startswith(self.encoder_prefixes):
            return "encoder"
        return "heads" if parameter.startswith(self.head_prefixes) else "decoder"

    def describe(self) -> dict[str, Any]:
        """The network's card, without building it (parameter counts from :data:`PARAMETERS`)."""
        d = asdict(self)
        d["sizes"] = list(SIZES)
        d["parameters"] = dict(PARAMETERS[self.name])
        if self.name == "lstmsa":
            d["parameters_head"] = dict(LSTMSA_HEAD_PARAMETERS)
        return d


# Parameter counts at the default channels / classes, so that listing the networks builds none of them
# (`napari-medseg models` stays fast). tests/test_models.py rebuilds every network and checks each number.
PARAMETERS = {
    "lstmsa": {"paper": 3_684_772, "small": 291_824},
    "bilateral": {"paper": 6_578_583, "small": 734_559},
    "bcdunet": {"paper": 22_983_301, "small": 2_246_805},
    "hourglass": {"paper": 6_795_086, "small": 678_646},
    "unet": {"paper": 1_979_009, "small": 194_501},
}
LSTMSA_HEAD_PARAMETERS = {"paper": 1_655_940, "small": 161_964}


def _builders() -> dict[str, Callable[..., nn.Module]]:
    from .bcdunet import BCDUNet
    from .bilateral import BilateralAttentionNet
    from .hourglass import AttentionHourglass
    from .lstmsa import LSTMSA
    from .unet import UNetBaseline

    def hourglass(in_channels, num_classes, size, **kw):
        return AttentionHourglass(in_channels=in_channels, num_discs=num_classes, size=size, **kw)

    return {
        "lstmsa": lambda in_channels, num_classes, size, **kw: LSTMSA(in_channels, num_classes, size, **kw),
        "bilateral": lambda in_channels, num_classes, size, **kw: BilateralAttentionNet(in_channels, num_classes, size, **kw),
        "bcdunet": lambda in_channels, num_classes, size, **kw: BCDUNet(in_channels, num_classes, size, **kw),
        "hourglass": hourglass,
        "unet": lambda in_channels, num_classes, size, **kw: UNetBaseline(in_channels, num_classes, size, **kw),
    }


REGISTRY: dict[str, ModelInfo] = {
    "lstmsa": ModelInfo(
        "lstmsa", "LSTMSA (self-attention embedded LSTM, 2.5D)", "segmentation", "2d+2.5d", 1, 4, "logits", MULTIPLES["lstmsa"],
        "Ye et al., IEEE TNNLS", {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-4, "schedule": "poly0.9",
                                  "batch_size": 8, "input_size": 224, "loss": "dice_ce"},
        encoder_prefixes=("backbone.conv_0", "backbone.down_"),
        head_prefixes=("forward_cell", "reverse_cell", "classifier"), cpu_runtime="onnxruntime"),
    "bilateral": ModelInfo(
        "bilateral", "Bilateral spatial attention network", "segmentation", "2d", 3, 1, "logits", MULTIPLES["bilateral"],
        "Sun, Sui, Liang, Hu, Du", {"optimizer": "adam", "lr": 1e-3, "batch_size": 16, "input_size": 256,
                                    "loss": "dice_ce", "augment": False},
        encoder_prefixes=("encoder.",), head_prefixes=("coarse_head.", "point_head."),
        # per parameter group the bf16 gradient fails (encoder cosine to fp64 0.96 at init, 0.970 on the
        # trained bilateral-kvasir-192 weights; docs/benchmarks.md), so "auto" trains it in fp32
        bf16_training=False, cpu_runtime="onnxruntime", bf16_cpu_runtime="onnxruntime"),
    "bcdunet": ModelInfo(
        "bcdunet", "BCDU-Net (bi-directional ConvLSTM U-Net, dense bottleneck)", "segmentation", "2d", 3, 1,
        "logits", MULTIPLES["bcdunet"], "Azad et al., ICCVW 2019", {"optimizer": "adam", "lr": 1e-4, "schedule": "plateau0.1p7",
                                                 "batch_size": 8, "input_size": 256, "loss": "bce", "epochs": 100},
        input_norm="zscore+minmax", encoder_prefixes=("enc1.", "enc2.", "enc3."), head_prefixes=("head.",),
        cpu_runtime="onnxruntime"),
    "hourglass": ModelInfo(
        "hourglass", "Stacked hourglass with multi-level attention (disc labeling)", "keypoints", "2d", 3, 11,
        "heatmaps", MULTIPLES["hourglass"], "Azad et al., MLMI 2021", {"optimizer": "rmsprop", "lr": 2.5e-4, "milestones": [60, 90],
                                                    "gamma": 0.1, "epochs": 120, "batch_size": 3, "input_size": 256,
                                                    "loss": "heatmap_mse", "balance_levels": True},
        bf16_training=False, encoder_prefixes=("stem.",), head_prefixes=("score.",), cpu_runtime="onnxruntime",
        # bf16 gradient cosine to fp64 0.82-0.84 at init, 0.79-0.92 after 3 steps (batch 3)
        bf16_cpu_runtime="onnxruntime"),
    "unet": ModelInfo(
        "unet", "U-Net baseline (MONAI BasicUNet)", "segmentation", "2d", 3, 1, "logits", MULTIPLES["unet"],
        "Ronneberger et al. 2015 / MONAI", {"optimizer": "adam", "lr": 1e-3, "batch_size": 16, "input_size": 256,
                                             "loss": "dice_ce"},
        encoder_prefixes=("net.conv_0.", "net.down_"), head_prefixes=("net.final_conv.",),
        # paper size: contiguous trains 1.4x faster than channels_last in fp32 and bf16 (InstanceNorm)
        memory_format={"paper": "contiguous", "small": "channels_last"}, cpu_runtime="onnxruntime",
        bf16_cpu_runtime="onnxruntime"),
}


def build(name: str, size: str = "small", in_channels: int | None = None, num_classes: int | None = None,
          **options) -> nn.Module:
    """Build a network by name (see :func:`available`). ``options`` go to the network's constructor
    (e.g. ``dense_blocks=1``, ``direction="reverse"``, ``render=False``, ``attention=False``)."""
    if name not in REGISTRY:
        raise InvalidInput(f"unknown network {name!r}; choose from {sorted(REGISTRY)}")
    if size not in SIZES:
        raise InvalidInput(f"unknown size {size!r}; choose from {SIZES}")
    info = REGISTRY[name]
    in_channels = info.default_in_channels if in_channels is None else int(in_channels)
    num_classes = info.default_num_classes if num_classes is None else int(num_classes)
    if in_channels < 1 or num_classes < 1:
        raise InvalidInput("in_channels and num_classes must be at least 1")
    model = _builders()[name](in_channels, num_classes, size, **options)
    model.medseg_info = {"name": name, "size": size, "in_channels": in_channels, "num_classes": num_classes,
                         "options": options}
    return model


@lru_cache(maxsize=None)
def parameter_count(name: str, size: str) -> int:
    return sum(p.numel() for p in build(name, size).parameters())


@lru_cache(maxsize=None)
def _lstmsa_head(size: str) -> int:
    return build("lstmsa", size).head_parameters()


def available() -> list[dict[str, Any]]:
    """Every network: name, task, sizes, input, output, the paper's recipe and parameter counts."""
    return [info.describe() for info in REGISTRY.values()]
