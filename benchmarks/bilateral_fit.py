"""Which part of the bilateral network slows its fit? Short runs of ablations through the real trainer.

The 60-epoch Kvasir runs (docs/results.md) leave the bilateral network below the U-Net on its own training
images as well as on test, so the gap is one of optimisation, not of generalisation. A full run costs 1-2
CPU-hours; this script compares variants on a proxy that costs a few minutes each: the first ``--cases``
training and half as many validation images of Kvasir-SEG, ``--size`` px, ``--epochs`` epochs, batch 16,
Adam 1e-3 with the cosine schedule, augmentation and the Dice + CE loss of the recipes, fp32, one seed per
run. Each row reports the validation Dice of the last epoch (the trainer's soft Dice), the mean of the
last three epochs (less noisy), the last epoch's training loss (with the point loss where the rendering
module is on, so compare losses only between rows that both render) and the fit: the same soft Dice on
the training images, in inference mode.

Variants: ``unet`` (the baseline), ``bilateral`` (as shipped), ``instance`` (``norm="instance"``),
``no-render`` (``render=False``), ``no-isam`` / ``no-attention`` (the ISAM, or ISAM and FSAM, replaced by
identities: ablations by surgery, not options of the network), ``swin-lr`` (the Swin blocks at a tenth
of the rate), ``lr-3e-4`` (the whole network at 3e-4), ``wide`` / ``wide-instance`` (``small``'s widths
doubled, 16 ... 128).

    OMP_NUM_THREADS=1 NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/bilateral_fit.py \\
        ../shared/data/kvasir-seg --variants unet bilateral instance --seeds 0 1

Rows are merged into benchmarks/results/bilateral_fit.json (keyed by variant and seed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_medseg.engine import train as T
from napari_medseg.models import bilateral as B

try:
    from _report import print_table, save_json
except ImportError:  # run as a module
    from benchmarks._report import print_table, save_json

RESULTS = Path(__file__).resolve().parent / "results" / "bilateral_fit.json"
VARIANTS = ("unet", "bilateral", "instance", "no-render", "no-isam", "no-attention", "swin-lr", "lr-3e-4",
            "wide", "wide-instance")


@contextmanager
def variant_of_trainer(variant: str):
    """The trainer's network and optimiser hooks changed for ``variant`` (restored afterwards); yields a
    dict whose ``"run"`` is the trainer's run once the network is built (to score the trained network)."""
    build_network, build_optimizer, widths = T.build_network, T.build_optimizer, B.SIZES["small"]["widths"]
    kept = {}

    def network(run):
        build_network(run)
        kept["run"] = run
        if variant in ("no-isam", "no-attention"):
            run.model.isam = nn.Identity()
        if variant == "no-attention":
            run.model.fsam = nn.Identity()

    def optimizer(model, recipe, lr):
        if variant == "lr-3e-4":
            return build_optimizer(model, recipe, 3e-4)
        if variant == "swin-lr":
            swin = [p for n, p in model.named_parameters() if n.startswith("isam.swin.")]
            ids = {id(p) for p in swin}
            rest = [p for p in model.parameters() if id(p) not in ids]
            return torch.optim.Adam([{"params": rest}, {"params": swin, "lr": lr * 0.1}], lr=lr)
        return build_optimizer(model, recipe, lr)

    T.build_network, T.build_optimizer = network, optimizer
    if variant.startswith("wide"):
        B.SIZES["small"]["widths"] = tuple(2 * w for w in widths)
    try:
        yield kept
    finally:
        T.build_network, T.build_optimizer, B.SIZES["small"]["widths"] = build_network, build_optimizer, widths


def run_variant(variant: str, seed: int, data: str, cases: int, epochs: int, size: int) -> dict:
    options = {"norm": "instance"} if variant.endswith("instance") else {}
    if variant == "no-render":
        options = {"render": False}
    model = "unet" if variant == "unet" else "bilateral"
    with tempfile.TemporaryDirectory() as tmp, variant_of_trainer(variant) as kept:
        opts = T.TrainOptions(model=model, out=str(Path(tmp) / "run"), data=data, size="small", epochs=epochs, batch_size=16,
                              input_size=size, seed=seed, augment=True, schedule="cosine", precision="fp32",
                              max_cases=cases, model_options=options)
        prepared = T.prepare_data(opts, (size, size))
        t0 = time.perf_counter()
        result = T.train(opts, data=prepared)
        seconds = time.perf_counter() - t0
        run = kept["run"]
        fit, _ = T.validate(run.model, prepared[0], "segmentation", run.device, run.precision, 16)
    history = result["history"]
    val = [h["dice"] for h in history]
    return {"variant": variant, "seed": seed, "cases": cases, "epochs": epochs, "size": size,
            "params": sum(p.numel() for p in run.model.parameters()),
            "val Dice (last)": round(val[-1], 4), "val Dice (last 3)": round(float(np.mean(val[-3:])), 4),
            "train loss (last)": round(history[-1]["train_loss"], 4), "fit Dice": round(fit["dice"], 4),
            "seconds": round(seconds, 1), "val Dice per epoch": [round(v, 4) for v in val]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="a Kvasir-SEG folder (napari-medseg's 2D layout with its split)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--cases", type=int, default=160)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)
    rows = json.loads(RESULTS.read_text())["rows"] if RESULTS.is_file() else []
    for seed in args.seeds:
        for variant in args.variants:
            row = run_variant(variant, seed, args.data, args.cases, args.epochs, args.size)
            rows = [r for r in rows if (r["variant"], r["seed"]) != (variant, seed)] + [row]
            save_json(RESULTS, {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows})
            print(json.dumps({k: v for k, v in row.items() if k != "val Dice per epoch"}), flush=True)
    headers = ["variant", "seed", "params", "val Dice (last)", "val Dice (last 3)", "train loss (last)", "fit Dice",
               "seconds"]
    print_table(headers, [[r[h] for h in headers] for r in sorted(rows, key=lambda r: (VARIANTS.index(r["variant"]),
                                                                                         r["seed"]))])


if __name__ == "__main__":
    main()
