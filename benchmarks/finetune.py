"""Fine-tuning a bundled model on a few of the user's images vs training from scratch on the same images.

ISIC 2016 crops (dermoscopy from another source than PH2): ``unet-ph2`` as it is, fine-tuned from it
(`train --init unet-ph2`: a tenth of the recipe's learning rate, 20 epochs) on the first N training images
of a seeded shuffle, and trained from scratch on the same images with the same epochs (so about the
same wall-clock time; both are reported), all scored on the 50-image test split at native resolution.

    NAPARI_MEDSEG_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/finetune.py [--sizes 10 25 50 200]

Writes benchmarks/results/finetune_isic.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_medseg import api
from napari_medseg.engine.train import TrainOptions, train

ROOT = Path(__file__).resolve().parents[1]


def subset(src: Path, dst: Path, train_stems: list[str], val: list[str], test: list[str]) -> Path:
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True)
        for p in (src / sub).iterdir():
            if p.stem in set(train_stems) | set(val) | set(test):
                os.link(p, dst / sub / p.name)
    (dst / "split.json").write_text(json.dumps({"train": train_stems, "val": val, "test": test}))
    return dst


def run(data: Path, out: Path, init: str | None, epochs: int) -> dict:
    t0 = time.perf_counter()
    res = train(TrainOptions(model="unet", data=str(data), out=str(out), recipe="bcdunet", input_size=128,
                             batch_size=8, epochs=epochs, seed=0, init=init))
    wall = time.perf_counter() - t0
    test = api.evaluate(str(data), weights=res["best_checkpoint"], subset="test", device="cpu", precision="fp32")
    return {"dice": round(test["mean"]["dice"], 4), "iou": round(test["mean"]["iou"], 4), "wall_s": round(wall, 1),
            "precision": res["precision"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50, 200])
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    shared = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
    src = shared / "isic2016-crops"
    split = json.loads((src / "split.json").read_text())
    order = [split["train"][i] for i in np.random.default_rng(0).permutation(len(split["train"]))]
    tmp = Path(tempfile.mkdtemp(prefix="medseg-ft-"))
    as_is = api.evaluate(str(src), model="unet-ph2", subset="test", device="cpu", precision="fp32")["mean"]
    results = {"dataset": "isic2016-crops", "test_images": len(split["test"]), "epochs": args.epochs,
               "unet-ph2 as it is": {"dice": round(as_is["dice"], 4), "iou": round(as_is["iou"], 4)}, "sizes": {}}
    print("unet-ph2 as it is:", results["unet-ph2 as it is"], flush=True)
    for n in args.sizes:
        data = subset(src, tmp / f"n{n}", order[:n], split["val"][:20], split["test"])
        ft = run(data, tmp / f"ft{n}", "unet-ph2", args.epochs)
        sc = run(data, tmp / f"sc{n}", None, args.epochs)
        results["sizes"][str(n)] = {"fine-tuned": ft, "from scratch": sc}
        print(n, "fine-tuned", ft, "scratch", sc, flush=True)
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "finetune_isic.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
