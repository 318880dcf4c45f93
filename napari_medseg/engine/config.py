"""Checkpoint configs without torch: the format, the refusal of pickles, reading ``config.json``.

Listing models (``napari-medseg models``, :mod:`napari_medseg.catalog`) reads only these, so it does not
import torch; :mod:`napari_medseg.engine.checkpoint` re-exports them beside the weight I/O.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io.errors import MedSegIOError

FORMAT = "napari-medseg checkpoint v1"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


class CheckpointError(MedSegIOError):
    pass


def resolve(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            path, "refusing to load a pickle-based PyTorch file (it can run arbitrary code); napari-medseg "
            "checkpoints are a folder with model.safetensors + config.json")
    if path.name == "model.safetensors" or path.name == "config.json":
        return path.parent
    if path.suffix == ".safetensors" and path.with_suffix(".json").is_file():
        return path  # file pair: x.safetensors + x.json
    raise CheckpointError(path, "not a napari-medseg checkpoint (expected a folder with model.safetensors and config.json)")


def read_config(path: str | os.PathLike) -> dict:
    path = resolve(Path(path))
    cfg_path = path / "config.json" if path.is_dir() else path.with_suffix(".json")
    if not cfg_path.is_file():
        raise CheckpointError(path, "config.json is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(cfg_path, f"unreadable config ({err})") from err
    if cfg.get("format") != FORMAT:
        raise CheckpointError(cfg_path, f"unknown checkpoint format {cfg.get('format')!r}")
    return cfg


def bundled_weights() -> dict[str, Path]:
    """Weights shipped inside the package (``napari_medseg/weights/<name>/``), by name: the one lookup the
    catalog, the API and ``--init`` use."""
    from importlib import resources

    root = resources.files("napari_medseg") / "weights"
    out = {}
    try:
        for entry in root.iterdir():
            if entry.is_dir() and (entry / "config.json").is_file():
                out[entry.name] = Path(str(entry))
    except FileNotFoundError:
        pass
    return dict(sorted(out.items()))
