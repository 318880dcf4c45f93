"""Is bf16 training faithful for each network? The cosine between the bf16 + channels_last training
gradient and the fp64 gradient, on a real batch of the recipe's size at 128 px, per parameter group
(encoder, decoder, heads) and over all parameters, at initialisation and after 3 fp32 Adam steps, and on
the bundled trained weights (napari_medseg.engine.fidelity). Also measures the variants tried on the way
(bilateral with default-init post-activation blocks, with pre-activation blocks, and the first design),
those in fp32 against fp64 as well: a variant that fails there is chaotic, not merely imprecise.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/gradient_fidelity.py

Writes benchmarks/results/gradient_fidelity.json and prints a Markdown table (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from napari_medseg import models
from napari_medseg.engine.fidelity import THRESHOLD, fidelity, real_batch

try:
    from _report import print_table, save_json
except ImportError:  # run as a module
    from benchmarks._report import print_table, save_json

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [(name, {}) for name in models.REGISTRY] + [
    ("bilateral", {"residual": "plain"}), ("bilateral", {"residual": "preact"}),
    ("bilateral", {"group_width": None, "decoder": "stride4"}),
]


def _worst(groups: dict) -> str:
    g = min((k for k in groups if k != "all"), key=groups.get)
    return f"{groups[g]:.4f} ({g})"


def main():
    from napari_medseg import api
    from napari_medseg.engine.config import read_config
    from napari_medseg.engine.fidelity import fidelity_of_weights

    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    rows, trained = [], []
    batches = {}
    for name, options in VARIANTS:
        bs = models.REGISTRY[name].recipe["batch_size"]
        batch = batches.setdefault(name, real_batch(name, data, n=bs, input_size=128))
        t = time.perf_counter()
        res = fidelity(name, batch, model_options=options)
        if options:  # a variant: is it chaotic (fails in fp32 too)?
            res["fp32_init"] = fidelity(name, batch, model_options=options, steps=0, dtype=torch.float32)["groups_init"]
        res.update(options=options, batch=bs, seconds=round(time.perf_counter() - t, 1),
                   policy="bf16" if models.REGISTRY[name].bf16_training else "fp32")
        rows.append(res)
        print(json.dumps(res), flush=True)
    for wname, path in api.bundled_weights().items():
        cfg = read_config(path)
        net = cfg["model"]["name"]
        # a batch of the checkpoint's own dataset (discs: its levels), at the recipe's batch size
        batch = real_batch(net, data, n=models.REGISTRY[net].recipe["batch_size"], input_size=128,
                           disc_numbers=cfg["preprocessing"].get("disc_numbers"),
                           dataset=cfg.get("card", {}).get("dataset"))
        r = fidelity_of_weights(wname, batch)
        trained.append(r)
        print(json.dumps(r), flush=True)
    save_json(ROOT / "benchmarks" / "results" / "gradient_fidelity.json",
              {"threshold": THRESHOLD, "input_size": 128, "rows": rows, "trained_weights": trained})
    print_table(["network", "variant", "batch", "loss", "all, init", "worst group, init", "worst group, 3 steps",
                 "fp32 vs fp64, worst group", "passes", "auto trains in"],
                [[r["network"], ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "as shipped", r["batch"],
                  r["loss"], f"{r['init']:.4f}", _worst(r["groups_init"]), _worst(r["groups_trained"]),
                  _worst(r["fp32_init"]) if "fp32_init" in r else "-", "yes" if r["passes"] else "no", r["policy"]]
                 for r in rows])
    print_table(["bundled weights", "network", "all", "worst group", "passes"],
                [[r["weights"], r["network"], f"{r['cosines']['all']:.4f}", _worst(r["cosines"]),
                  "yes" if r["passes"] else "no"] for r in trained])


if __name__ == "__main__":
    main()
