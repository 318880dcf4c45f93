"""The networks: one file each, the shared ConvLSTM, and a registry. Pure torch + MONAI blocks."""

from .registry import REGISTRY, SIZES, ModelInfo, available, build, parameter_count

__all__ = ["REGISTRY", "SIZES", "ModelInfo", "available", "build", "parameter_count"]
