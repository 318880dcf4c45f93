"""Is bf16 training faithful for each network? The cosine between the bf16 + channels_last training
gradient and the fp64 gradient, on a real batch of the recipe's size at 128 px, at initialisation and
after 3 fp32 Adam steps (napari_medseg.engine.fidelity). Also measures the variants tried on the way
(bilateral with default-init post-activation blocks, and with pre-activation blocks).

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
]


def main():
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    rows = []
    for name, options in VARIANTS:
        bs = models.REGISTRY[name].recipe["batch_size"]
        t = time.perf_counter()
        res = fidelity(name, real_batch(name, data, n=bs, input_size=128), model_options=options)
        res.update(options=options, batch=bs, seconds=round(time.perf_counter() - t, 1),
                   policy="bf16" if models.REGISTRY[name].bf16_training else "fp32")
        rows.append(res)
        print(json.dumps(res), flush=True)
    save_json(ROOT / "benchmarks" / "results" / "gradient_fidelity.json",
              {"threshold": THRESHOLD, "input_size": 128, "rows": rows})
    print_table(["network", "variant", "batch", "loss", "cosine at init", "after 3 steps", "passes", "auto precision"],
                [[r["network"], ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "as shipped", r["batch"],
                  r["loss"], f"{r['init']:.4f}", f"{r['trained']:.4f}", "yes" if r["passes"] else "no", r["policy"]]
                 for r in rows])


if __name__ == "__main__":
    main()
