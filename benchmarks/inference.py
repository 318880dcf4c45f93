"""Inference throughput per network: slices per forward pass, and whole CT volumes.

For each segmentation network (``small``, untrained weights with a fixed seed: speed does not depend on
them; one grey channel, 4 classes, 256x256 network input, the training preprocessing of the bundled ACDC
models, LSTMSA with its 2.5D stacks), through the Predictor users get (``precision="auto"``):

1. slices per forward pass: ms per slice on 32 slices of ``volumes/ct-abdomen.nii.gz`` with batches of
   1, 2, 4, 8, 16 and ``"auto"`` (memory budget, napari_medseg.engine.memory), interleaved round robin,
   one warm-up, median of ``--repeats``;
2. whole volumes at ``"auto"``: the CT sample (122x101, 112 slices) and a synthetic 300-slice CT
   (the sample upsampled in-plane to 512x512 and cycled to 300 slices), median of ``--volume-repeats``.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/inference.py --threads 1

Writes benchmarks/results/inference.json and prints Markdown tables (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_medseg import api, io, models
from napari_medseg.engine.config import read_config
from napari_medseg.engine.infer import Predictor

try:
    from _report import print_table, save_json
except ImportError:  # run as a module
    from benchmarks._report import print_table, save_json

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("unet", "bilateral", "bcdunet", "lstmsa")
BATCHES = (1, 2, 4, 8, 16, "auto")


def predictor(name: str, batch_size) -> Predictor:
    """Network ``name`` with the preprocessing of the bundled ACDC model of its kind, at 256x256."""
    bundled = api.bundled_weights()
    cfg = copy.deepcopy(read_config(bundled["lstmsa-acdc" if name == "lstmsa" else "unet-acdc-300"]))
    cfg["preprocessing"]["input_size"] = [256, 256]
    torch.manual_seed(0)
    in_channels = int(cfg["model"]["in_channels"])
    model = models.build(name, "small", in_channels=in_channels, num_classes=4)
    cfg["model"].update(name=name, options={})
    return Predictor(model, cfg, device="cpu", precision="auto", batch_size=batch_size)


def synthetic_ct(vol: io.Volume, slices: int = 300, size: int = 512) -> io.Volume:
    data = np.asarray(vol.data, dtype=np.float32)
    zoom = (size / data.shape[0], size / data.shape[1], 1)
    big = ndimage.zoom(data, zoom, order=1)
    reps = int(np.ceil(slices / big.shape[2]))
    cycled = np.concatenate([big] * reps, axis=2)[..., :slices]
    affine = vol.affine.copy()
    affine[:3, 0] /= zoom[0]
    affine[:3, 1] /= zoom[1]
    return io.Volume(cycled, affine, name="synthetic-ct-300")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--volume-repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=list(NETWORKS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inference.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
    ct = io.read_nifti(data / "volumes" / "ct-abdomen.nii.gz")
    big = synthetic_ct(ct)
    part = list(range(40, 72))
    rows = []
    for name in args.only:
        preds = {b: predictor(name, b) for b in BATCHES}
        for p in preds.values():  # warm-up (and the auto batch's one measurement)
            p.segment_volume(ct, only_slices=part)
        times = {b: [] for b in BATCHES}
        for _ in range(args.repeats):
            for b, p in preds.items():
                t = time.perf_counter()
                p.segment_volume(ct, only_slices=part)
                times[b].append((time.perf_counter() - t) / len(part) * 1e3)
        row = {"network": name, "precision": str(preds[1].precision.dtype or "fp32").replace("torch.", ""),
               "threads": args.threads, "ms_per_slice": {str(b): statistics.median(v) for b, v in times.items()},
               "auto_batch": preds["auto"].last_batch_size}
        auto = preds["auto"]
        for label, vol in (("ct_112", ct), ("synthetic_300", big)):
            ts = []
            for _ in range(args.volume_repeats):
                t = time.perf_counter()
                auto.segment_volume(vol)
                ts.append(time.perf_counter() - t)
            row[f"s_{label}"] = statistics.median(ts)
            row[f"batch_{label}"] = auto.last_batch_size
        rows.append(row)
        print(json.dumps(row), flush=True)
    save_json(args.out, {"threads": args.threads, "repeats": args.repeats, "rows": rows})
    print_table(["network", "precision", *(f"batch {b}" for b in BATCHES), "best / batch 1"],
                [[r["network"], r["precision"], *(f"{r['ms_per_slice'][str(b)]:.0f}" for b in BATCHES),
                  f"{min(r['ms_per_slice'].values()) / r['ms_per_slice']['1']:.2f}"] for r in rows])
    print_table(["network", "auto batch", "CT sample, 112 slices (s)", "synthetic CT, 300 slices 512x512 (s)",
                 "s per 100 slices (300-slice CT)"],
                [[r["network"], r["auto_batch"], f"{r['s_ct_112']:.1f}", f"{r['s_synthetic_300']:.1f}",
                  f"{r['s_synthetic_300'] / 3:.1f}"] for r in rows])


if __name__ == "__main__":
    main()
