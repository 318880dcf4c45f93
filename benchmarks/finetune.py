"""Fine-tuning a bundled model on a few of the user's images vs training from scratch on the same images.

ISIC 2016 crops (dermoscopy from another source than PH2): ``unet-ph2`` as it is, fine-tuned from it
(`train --init unet-ph2`: the engine's fine-tuning defaults, learning rate 1e-4 and 20 epochs) on the first N training images
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


def run(data: Path, out: Path, init: str | None, epochs: int, lr: float | None = None) -> dict:
    t0 = time.perf_counter()
    res = train(TrainOptions(model="unet", data=str(data), out=str(out), recipe="bcdunet", input_size=128,
                             batch_size=8, epochs=epochs, seed=0, init=init, lr=lr))
    wall = time.perf_counter() - t0
    test = api.evaluate(str(data), weights=res["best_checkpoint"], subset="test", device="cpu", precision="fp32")
    return {"dice": round(test["mean"]["dice"], 4), "iou": round(test["mean"]["iou"], 4), "wall_s": round(wall, 1),
            "precision": res["precision"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50, 200])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--ft-lr", type=float, default=None,
                    help="fine-tuning learning rate (default: the engine's, 1e-4 or the recipe's when lower)")
    ap.add_argument("--no-scratch", action="store_true", help="only the fine-tuning runs")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args()
    shared = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
    src = shared / "isic2016-crops"
    split = json.loads((src / "split.json").read_text())
    order = [split["train"][i] for i in np.random.default_rng(0).permutation(len(split["train"]))]
    tmp = Path(tempfile.mkdtemp(prefix="medseg-ft-"))
    as_is = api.evaluate(str(src), model="unet-ph2", subset="test", device="cpu", precision="fp32")["mean"]
    results = {"dataset": "isic2016-crops", "test_images": len(split["test"]), "epochs": args.epochs,
               "fine_tune_lr": args.ft_lr or "engine default (1e-4 here)",
               "unet-ph2 as it is": {"dice": round(as_is["dice"], 4), "iou": round(as_is["iou"], 4)}, "sizes": {}}
    print("unet-ph2 as it is:", results["unet-ph2 as it is"], flush=True)
    for n in args.sizes:
        data = subset(src, tmp / f"n{n}", order[:n], split["val"][:20], split["test"])
        ft = run(data, tmp / f"ft{n}", "unet-ph2", args.epochs, args.ft_lr)
        sc = None if args.no_scratch else run(data, tmp / f"sc{n}", None, args.epochs)
        results["sizes"][str(n)] = {"fine-tuned": ft, "from scratch": sc}
        print(n, "fine-tuned", ft, "scratch", sc, flush=True)
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    name = f"finetune_isic{'_' + args.tag if args.tag else ''}.json"
    (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def acdc_new_patients(epochs: int = 20) -> dict:
    """ACDC to new patients: ``unet-acdc-300`` as it is vs fine-tuned (``--init unet-acdc-300``) on 2
    labelled volumes of test patients it never saw, scored on the other 6 test volumes.

        NAPARI_MEDSEG_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python -c \\
            "import benchmarks.finetune as f; f.acdc_new_patients()"
    """
    shared = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
    src = shared / "acdc"
    split = json.loads((src / "split.json").read_text())
    own, rest = split["test"][:2], split["test"][2:]
    tmp = Path(tempfile.mkdtemp(prefix="medseg-ft-acdc-"))
    data = tmp / "acdc"
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
        for p in (src / sub).iterdir():
            if any(p.name.startswith(s) for s in own + rest):
                os.link(p, data / sub / p.name)
    if (src / "dataset.json").is_file():
        os.link(src / "dataset.json", data / "dataset.json")
    (data / "split.json").write_text(json.dumps({"train": own, "val": own[:1], "test": rest}))
    as_is = api.evaluate(str(data), model="unet-acdc-300", subset="test", device="cpu", precision="fp32")["mean"]
    t0 = time.perf_counter()
    res = train(TrainOptions(model="unet", data=str(data), out=str(tmp / "ft"), recipe="lstmsa", input_size=128,
                             batch_size=8, epochs=epochs, seed=0, init="unet-acdc-300"))
    wall = time.perf_counter() - t0
    ft = api.evaluate(str(data), weights=res["last_checkpoint"], subset="test", device="cpu", precision="fp32")["mean"]
    out = {"fine-tuned on": own, "scored on": rest, "epochs": epochs,
           "as it is": {k: round(as_is[k], 4) for k in ("dice", "iou", "hd95")} | {"per_class": as_is["dice_per_class"]},
           "fine-tuned": {k: round(ft[k], 4) for k in ("dice", "iou", "hd95")} | {"per_class": ft["dice_per_class"],
                                                                               "wall_s": round(wall, 1)}}
    print(json.dumps(out, indent=1))
    (ROOT / "benchmarks" / "results" / "finetune_acdc.json").write_text(json.dumps(out, indent=1) + "\n")
    return out
