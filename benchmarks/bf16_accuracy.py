"""Does bf16 autocast change what a network learns? Same network, data, seed and budget, trained in
fp32 and in bf16, then evaluated the same way (fp32 inference on the validation split at native size).

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/bf16_accuracy.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from napari_medseg import api
from napari_medseg.engine.train import TrainOptions, train


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="unet")
    ap.add_argument("--dataset", default="kvasir-seg")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--cases", type=int, default=160)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results/bf16_accuracy.json")
    args = ap.parse_args()
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            t = time.perf_counter()
            res = train(TrainOptions(model=args.model, data=str(data / args.dataset), out=f"{tmp}/{precision}",
                                     epochs=args.epochs, batch_size=8, input_size=args.size, precision=precision,
                                     max_cases=args.cases, seed=0))
            wall = time.perf_counter() - t
            ev = api.evaluate(str(data / args.dataset), weights=res["best_checkpoint"], subset="val", device="cpu")
            rows[precision] = {"train_wall_s": round(wall, 1), "val_dice_resized": res["best"],
                               "val_dice": ev["mean"]["dice"], "val_iou": ev["mean"]["iou"],
                               "val_hd95": ev["mean"]["hd95"]}
            print(precision, rows[precision], flush=True)
    rows["setup"] = vars(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
