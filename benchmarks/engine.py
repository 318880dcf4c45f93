"""Engine throughput on CPU, every network's small size through the same engine, fp32 and bf16:

* training: images/s over a few steps (batch 8, 256x256, real Kvasir-SEG / ACDC / spine-discs data),
  with the time spent waiting for the data loader next to the compute time;
* inference: ms per 256x256 image (``segment_image``) and s per 3D volume (``segment_volume`` on
  ``volumes/ct-abdomen.nii.gz``, slice by slice) / per spine volume (``label_discs``).

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/engine.py [--steps 6]

Ratios are against the U-Net baseline measured in the same run. Untrained weights: speed does not
depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_medseg import io
from napari_medseg.engine.infer import Predictor
from napari_medseg.engine.train import TrainOptions, train

try:
    from _timing import median_time
except ImportError:  # run as a module
    from benchmarks._timing import median_time

DATA = {"unet": "kvasir-seg", "bilateral": "kvasir-seg", "bcdunet": "kvasir-seg", "lstmsa": "acdc",
        "hourglass": "spine-discs"}


def train_throughput(name: str, data: Path, precision: str, steps: int, tmp: Path) -> dict:
    hist = train(TrainOptions(model=name, data=str(data / DATA[name]), out=str(tmp / f"{name}-{precision}"),
                              epochs=1, batch_size=8, input_size=256, precision=precision, max_cases=24,
                              max_steps_per_epoch=steps, seed=0))["history"][0]
    return {"images_per_s": hist["samples"] / (hist["data_s"] + hist["compute_s"]),
            "data_s": hist["data_s"], "compute_s": hist["compute_s"], "ckpt": str(tmp / f"{name}-{precision}" / "last")}


def infer_times(ckpt: str, precision: str, data: Path, repeats: int) -> dict:
    pred = Predictor.from_checkpoint(ckpt, device="cpu", precision=precision)
    out = {}
    if pred.task == "keypoints":
        vol = io.read_nifti(sorted((data / "spine-discs" / "images").glob("*.nii.gz"))[0])
        out["s_per_spine_volume"] = median_time(lambda: pred.label_discs(vol), repeats)
        return out
    img = np.random.default_rng(0).integers(0, 255, (256, 256, pred.channels if pred.channels == 3 else 1),
                                            dtype=np.uint8)
    img = img if pred.channels == 3 else img[..., 0]
    out["ms_per_image"] = median_time(lambda: pred.segment_image(img), repeats) * 1e3
    vol = io.read_nifti(data / "volumes" / "ct-abdomen.nii.gz")
    t = time.perf_counter()
    pred.segment_volume(vol)
    out["s_per_ct_volume"] = time.perf_counter() - t
    out["ct_slices"] = int(vol.data.shape[2])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/engine.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name in ["unet", "lstmsa", "bilateral", "bcdunet", "hourglass"]:
            for precision in ("fp32", "bf16"):
                tr = train_throughput(name, data, precision, args.steps, Path(tmp))
                inf = infer_times(tr.pop("ckpt"), precision, data, args.repeats)
                row = {"name": name, "precision": precision, **tr, **inf}
                rows.append(row)
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    base = {r["precision"]: r for r in rows if r["name"] == "unet"}
    print("\n| network | precision | train img/s | / U-Net | loader wait % | ms per 256² image | / U-Net "
          "| s per CT volume (112 slices) / spine volume | / U-Net |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = base[r["precision"]]
        wait = 100 * r["data_s"] / (r["data_s"] + r["compute_s"])
        if "ms_per_image" in r:
            img = f"{r['ms_per_image']:.0f} | {r['ms_per_image'] / b['ms_per_image']:.2f}"
            vol = f"{r['s_per_ct_volume']:.1f} | {r['s_per_ct_volume'] / b['s_per_ct_volume']:.2f}"
        else:
            img = "- | -"
            vol = f"{r['s_per_spine_volume']:.2f} (spine) | -"
        print(f"| {r['name']} | {r['precision']} | {r['images_per_s']:.1f} | "
              f"{r['images_per_s'] / b['images_per_s']:.2f} | {wait:.1f} | {img} | {vol} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "wall_s": time.time() - t0}, indent=1))


if __name__ == "__main__":
    main()
