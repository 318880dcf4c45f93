"""Why the attention hourglass stays in fp32: where its bf16 gradient goes wrong, and what does not fix it.

The gradient check (napari_medseg.engine.fidelity) on a real spine-discs batch (batch 3, as the recipe)
for the shipped network and for variants: fp32 islands (one part of the network run outside autocast),
BatchNorm or the residual additions in fp32, z-scored input, 256 px input, shallower hourglasses, one
stack, no attention. The fp32 gradient (autocast off) is the control: it agrees with fp64 to 1e-6.

    NAPARI_MEDSEG_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hourglass_bf16.py

Writes benchmarks/results/hourglass_bf16.json and prints a Markdown table (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from napari_medseg import models
from napari_medseg.engine.fidelity import THRESHOLD, gradient_cosine, real_batch
from napari_medseg.models import hourglass as H

try:
    from _report import print_table, save_json
except ImportError:  # run as a module
    from benchmarks._report import print_table, save_json

ROOT = Path(__file__).resolve().parents[1]


class FP32(nn.Module):
    """Runs ``inner`` outside autocast on fp32 inputs (an fp32 island in a bf16 network); fp64 untouched."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        if not torch.is_autocast_enabled("cpu"):
            return self.inner(*args)
        with torch.autocast("cpu", enabled=False):
            return self.inner(*[a.float() if a.dtype == torch.bfloat16 else a for a in args])


class ResidualFP32(H.PreActBottleneck):
    """The pre-activation bottleneck with its addition done in fp32."""

    def forward(self, x):
        up = (lambda t: t.float() if t.dtype == torch.bfloat16 else t)
        return up(self.body(x)) + up(self.shortcut(x))


def islands(*names):
    def apply(model):
        for name in names:
            parent, _, leaf = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, leaf, FP32(getattr(owner, leaf)))
        return model
    return apply


def bn_fp32(model):
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(mod, child_name, FP32(child))
    return model


def residual_fp32(model):
    for mod in model.modules():
        if isinstance(mod, H.PreActBottleneck):
            mod.__class__ = ResidualFP32
    return model


def zscore(batch):
    x = batch["image"]
    return dict(batch, image=(x - x.mean((1, 2, 3), keepdim=True)) / x.std((1, 2, 3), keepdim=True))


# (label, build options, model edit, batch edit, input size)
VARIANTS = [
    ("as shipped", {}, None, None, 128),
    ("fp32 control (autocast off)", {}, "fp32", None, 128),
    ("stem in fp32", {}, islands("stem"), None, 128),
    ("stem + both hourglasses in fp32", {}, islands("stem", "hourglasses.0", "hourglasses.1"), None, 128),
    ("hourglasses in fp32", {}, islands("hourglasses.0", "hourglasses.1"), None, 128),
    ("every BatchNorm in fp32", {}, bn_fp32, None, 128),
    ("residual additions in fp32", {}, residual_fp32, None, 128),
    ("z-scored input", {}, None, zscore, 128),
    ("256 px input (the paper's)", {}, None, None, 256),
    ("hourglass depth 3", {"depth": 3}, None, None, 128),
    ("hourglass depth 2", {"depth": 2}, None, None, 128),
    ("one stack", {"num_stacks": 1}, None, None, 128),
    ("no attention", {"attention": False}, None, None, 128),
]


def main():
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    batches, rows = {}, []
    for label, options, edit, batch_edit, size in VARIANTS:
        if size not in batches:
            batches[size] = real_batch("hourglass", data, n=3, input_size=size)
        batch = batch_edit(batches[size]) if batch_edit else batches[size]
        row = {"variant": label, "options": options, "input_size": size}
        t = time.perf_counter()
        for seed in (0, 1):
            torch.manual_seed(seed)
            model = models.build("hourglass", "small", in_channels=3, num_classes=batch["target"].shape[1], **options)
            if callable(edit):
                model = edit(model)
            dtype = None if edit == "fp32" else torch.bfloat16
            row[f"seed{seed}"] = gradient_cosine(model.train(), batch, "keypoints", "heatmap_mse", dtype=dtype)
        row["seconds"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    save_json(ROOT / "benchmarks" / "results" / "hourglass_bf16.json", {"threshold": THRESHOLD, "batch": 3, "rows": rows})
    print_table(["hourglass (small, batch 3, at init)", "input", "cosine to fp64, seed 0", "seed 1", "passes"],
                [[r["variant"], f"{r['input_size']} px", f"{r['seed0']:.4f}", f"{r['seed1']:.4f}",
                  "yes" if min(r["seed0"], r["seed1"]) >= THRESHOLD else "no"] for r in rows])


if __name__ == "__main__":
    main()
