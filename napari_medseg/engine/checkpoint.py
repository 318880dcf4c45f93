"""Checkpoints: safetensors weights + a JSON config, written atomically, never unpickled.

A checkpoint is a directory::

    model.safetensors     weights
    config.json           model name, size, channels, classes, preprocessing, data summary, metrics,
                          software versions
    train_state.safetensors + train_state.json   (optional) optimizer, scheduler, epoch, RNG states

It is written into a temporary sibling directory and renamed into place, so an interrupted write
never leaves a half checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as tensors_to_bytes

from ..io.atomic import default_mode
from ..io.errors import NO_SPACE, write_error
from .config import FORMAT, CheckpointError, read_config  # noqa: F401 - re-exported
from .config import bundled_weights
from .config import resolve as _resolve





def software_versions() -> dict[str, str]:
    import monai

    from .. import __version__

    return {"napari_medseg": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "python": platform.python_version()}


def _flatten_state(obj: Any, prefix: str, tensors: dict, skeleton: Any = None):
    """Split a nested state (dicts/lists of tensors and plain values) into tensors + a JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_json_key(k), _flatten_state(v, f"{prefix}.{k}" if prefix else str(k), tensors)]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint without pickle")


def _json_key(k):
    return {"int": k} if isinstance(k, int) else k


def _unflatten_state(skel: Any, tensors: dict) -> Any:
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__dict__" in skel:
            return {(k["int"] if isinstance(k, dict) else k): _unflatten_state(v, tensors) for k, v in skel["__dict__"]}
        if "__list__" in skel:
            items = [_unflatten_state(v, tensors) for v in skel["__list__"]]
            return tuple(items) if skel.get("tuple") else items
        if "__ndarray__" in skel:
            return np.asarray(skel["__ndarray__"], dtype=skel["dtype"])
    return skel


def _write_tensors(tensors: dict, path: Path) -> None:
    """A safetensors file written by Python's own I/O, so that a full disk is an ``OSError`` (ENOSPC) like
    any other write (safetensors' writer raises its own error type for it)."""
    with open(path, "wb") as fh:
        fh.write(tensors_to_bytes(tensors))


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, config: dict,
                    train_state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (temp dir + rename)."""
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp makes 0700 whatever the umask
    except OSError as err:
        raise CheckpointError(path, f"cannot write here: {err.strerror or err}") from err
    try:
        module = model.module if hasattr(model, "module") else model
        module = getattr(module, "_orig_mod", module)  # torch.compile wrapper
        weights = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        _write_tensors(weights, tmp / "model.safetensors")
        cfg = {"format": FORMAT, **config, "software": software_versions()}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=_json_default) + "\n")
        if train_state is not None:
            tensors: dict = {}
            skeleton = _flatten_state(train_state, "", tensors)
            _write_tensors(tensors, tmp / "train_state.safetensors")
            (tmp / "train_state.json").write_text(json.dumps(skeleton))
        for f in tmp.iterdir():  # safetensors writes 0600: give files the umask's mode like any other output
            os.chmod(f, default_mode())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in NO_SPACE:  # the run stops with one line; --resume continues from the last checkpoint
            raise write_error(path, err, "could not write checkpoint") from err
        raise CheckpointError(path, f"could not write checkpoint: {err.strerror or err}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = _resolve(Path(path))
    wpath = path / "model.safetensors" if path.is_dir() else path
    if not wpath.is_file():
        raise CheckpointError(path, "model.safetensors is missing")
    try:
        return load_file(str(wpath))
    except MemoryError:
        raise
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise CheckpointError(wpath, f"unreadable weights ({err.__class__.__name__}: {err})") from err


def load_model(path: str | os.PathLike, *, expect_model: str | None = None, expect_classes: int | None = None,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Build the network the config names and load its weights. Never unpickles."""
    from .. import models

    cfg = read_config(path)
    m = cfg.get("model", {})
    if expect_model is not None and m.get("name") != expect_model:
        raise CheckpointError(Path(path), f"checkpoint holds network {m.get('name')!r}, not {expect_model!r}")
    if expect_classes is not None and m.get("num_classes") != expect_classes:
        raise CheckpointError(Path(path), f"checkpoint predicts {m.get('num_classes')} classes, not {expect_classes}")
    model = models.build(m["name"], m.get("size", "small"), in_channels=m["in_channels"],
                         num_classes=m["num_classes"], **m.get("options", {}))
    try:
        model.load_state_dict(load_weights(path))
    except RuntimeError as err:
        raise CheckpointError(Path(path), f"weights do not fit network {m['name']} ({str(err).splitlines()[0]})") from err
    return model.to(device).eval(), cfg


def load_train_state(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not (path / "train_state.json").is_file():
        return None
    skeleton = json.loads((path / "train_state.json").read_text())
    tensors = load_file(str(path / "train_state.safetensors"))
    return _unflatten_state(skeleton, tensors)


def resolve_init(init: str) -> Path:
    """``--init``: a bundled weights name or a checkpoint folder."""
    bundled = bundled_weights().get(init) if "/" not in init and os.sep not in init else None
    if bundled is not None:
        return bundled
    path = Path(init)
    if not path.exists():
        raise CheckpointError(path, "no such checkpoint folder and no bundled weights by that name "
                                    "(napari-medseg models lists them)")
    return _resolve(path)


def _by_level(fresh: torch.Tensor, old: torch.Tensor, old_numbers: list, new_numbers: list) -> torch.Tensor | None:
    """A disc head tensor for ``new_numbers`` from one trained for ``old_numbers``: the axis whose size is the
    number of levels is mapped level by level (levels both know keep their trained values; new levels
    keep ``fresh``'s values, zero where they feed back into the network). None when no axis fits."""
    k_old, k_new = len(old_numbers), len(new_numbers)
    for axis in range(fresh.ndim):
        if fresh.shape[axis] != k_new or old.shape[axis] != k_old:
            continue
        if [s for i, s in enumerate(fresh.shape) if i != axis] != [s for i, s in enumerate(old.shape) if i != axis]:
            continue
        out = fresh.clone()
        if axis > 0:  # an input axis (the heatmaps fed back): a new level starts silent
            out.narrow(axis, 0, k_new).zero_()
        for j, n in enumerate(new_numbers):
            if n in old_numbers:
                out.narrow(axis, j, 1).copy_(old.narrow(axis, old_numbers.index(n), 1))
        return out
    return None


def init_from(model, init: str, *, network: str, size: str, in_channels: int, numbers: list | None = None) -> dict:
    """Load the weights of ``init`` into ``model`` for fine-tuning: same network, size and input channels;
    tensors whose shape differs (the output head when the number of classes differs) keep their fresh
    initialisation, except that a disc model's heads are mapped level by level when ``numbers`` (the new
    disc numbers) and the checkpoint's own differ (our choice: a model trained for T11/T12 ... L4/L5 keeps
    those levels when it is taught T10/T11 ... L5/S1). Returns what was done, for the log and the config."""
    path = resolve_init(init)
    cfg = read_config(path)
    m = cfg.get("model", {})
    if m.get("name") != network or m.get("size") != size:
        raise CheckpointError(path, f"is a {m.get('name')} ({m.get('size')}) checkpoint; fine-tuning needs the same "
                                    f"network and size ({network}, {size})")
    if int(m.get("in_channels", in_channels)) != in_channels:
        raise CheckpointError(path, f"takes {m.get('in_channels')} input channel(s); these data have {in_channels}")
    weights = load_weights(path)
    own = model.state_dict()
    loaded = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    from .disc_targets import channel_keys

    old_numbers = channel_keys(cfg.get("preprocessing") or {}) or None
    mapped = []
    if numbers and old_numbers and list(numbers) != list(old_numbers):
        for k, v in weights.items():
            if k in own and k not in loaded:
                by_level = _by_level(own[k], v, list(old_numbers), list(numbers))
                if by_level is not None:
                    loaded[k] = by_level
                    mapped.append(k)
    fresh = sorted(k for k in own if k not in loaded)
    unused = sorted(k for k in weights if k not in loaded)
    if not loaded:
        raise CheckpointError(path, "none of its tensors fit this network")
    model.load_state_dict(loaded, strict=False)
    return {"from": init, "path": str(path), "loaded_tensors": len(loaded), "reinitialised": fresh,
            "unused": unused, "classes_before": m.get("num_classes"), "mapped_by_level": mapped,
            "levels_before": old_numbers}
