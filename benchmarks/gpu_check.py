"""One command for an accelerator (at most ~10 minutes on one CUDA GPU): does everything that only a GPU
can show still hold, and how fast is it.

1. devices: a bundled model segments a Kvasir test image on the GPU with the CPU's labels (>= 99.9 % of
   pixels), and a short training run (2 epochs of 2 steps) completes on the GPU with ``precision="auto"``;
2. per network at ``--size`` (default ``paper``), at its recipe's batch on real data at 256 px (the recipe's
   input size), for bf16 autocast and for fp16 autocast with a gradient scaler: one training step as the
   trainer takes it (``engine.train.train_step``), steps per second (median of ``--steps`` after a warm-up),
   peak GPU memory, and the gradient's cosine to fp64 per parameter group at initialisation
   (``engine.fidelity``; >= 0.99 in every group is the rule for a faithful reduced precision);
3. a 300-slice 512x512 CT (``benchmarks/inference.py::synthetic_ct``) through ``api.segment`` with every
   bundled segmentation model, on the GPU.

    bash benchmarks/gpu_check.sh                     # = python benchmarks/gpu_check.py --device cuda
    python benchmarks/gpu_check.py --device cpu --quick   # the same code paths on a CPU, small (a smoke test)

Writes benchmarks/results/gpu_check.json and prints Markdown tables (record them in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from napari_medseg import api, io, models
from napari_medseg.engine import data as D
from napari_medseg.engine.config import read_config
from napari_medseg.engine.devices import Precision
from napari_medseg.engine.fidelity import THRESHOLD, fidelity, real_batch
from napari_medseg.engine.losses import build_loss
from napari_medseg.engine.train import TrainOptions, build_optimizer, train, train_step

try:
    from _report import print_table, save_json
    from inference import synthetic_ct
except ImportError:  # run as a module
    from benchmarks._report import print_table, save_json
    from benchmarks.inference import synthetic_ct

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def devices_section(device: torch.device, data: Path, tmp: Path, quick: bool) -> dict:
    layout = D.discover(data / "kvasir-seg")
    vol = io.read(layout.pairs[D.split(layout)["test"][0]][0])[0]
    cpu = np.asarray(api.segment(vol, model="unet-kvasir-192", device="cpu", runtime="torch").labels)
    dev = np.asarray(api.segment(vol, model="unet-kvasir-192", device=device.type, runtime="torch").labels)
    same = float((cpu == dev).mean())
    t = time.perf_counter()
    run = train(TrainOptions(model="unet", out=str(tmp / "run"), data=str(data / "kvasir-seg"), epochs=2,
                             max_steps_per_epoch=2, max_cases=8, input_size=64 if quick else 192,
                             batch_size=4, device=device.type, overwrite=True))
    return {"labels_same_as_cpu": same, "labels_pass": same >= 0.999, "train_reason": run["reason"],
            "train_precision": run["precision"], "train_s": time.perf_counter() - t}


def network_section(name: str, size: str, device: torch.device, data: Path, steps: int, quick: bool) -> list[dict]:
    info = models.REGISTRY[name]
    px = 64 if quick else int(info.recipe.get("input_size", 256))
    bs = 2 if quick else int(info.recipe["batch_size"])
    batch = real_batch(name, data, n=bs, input_size=px)
    task = info.task
    loss = "heatmap_mse" if task == "keypoints" else info.recipe.get("loss", "dice_ce")
    k = batch["target"].shape[1] if task == "keypoints" else max(2, int(batch["target"].max()) + 1)
    rows = []
    dtypes = [torch.bfloat16] if device.type == "cpu" else [torch.bfloat16, torch.float16]
    for dtype in dtypes:
        torch.manual_seed(0)
        model = models.build(name, size, in_channels=batch["image"].shape[-3], num_classes=k).to(device).train()
        precision = Precision(device.type, dtype, scaler=dtype == torch.float16 and device.type == "cuda")
        optimizer = build_optimizer(model, info.recipe, info.recipe.get("lr", 1e-3))
        scaler = precision.grad_scaler()
        criterion = build_loss(loss, task)
        kw = dict(batch=batch, criterion=criterion, optimizer=optimizer, scaler=scaler, precision=precision,
                  task=task, device=device, channels_last=False)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        train_step(model, **kw)  # warm-up
        times = []
        for _ in range(steps):
            _sync(device)
            t = time.perf_counter()
            train_step(model, **kw)
            _sync(device)
            times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        fid = fidelity(name, batch, size=size, steps=0, loss=loss, dtype=dtype, device=device, channels_last=False)
        rows.append({"network": name, "size": size, "dtype": str(dtype).removeprefix("torch."), "batch": bs,
                     "input": px, "steps_per_s": 1.0 / statistics.median(times), "peak_mb": peak,
                     "cosines": fid["groups_init"], "passes": fid["passes"]})
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def volume_section(device: torch.device, data: Path, quick: bool) -> list[dict]:
    vol = synthetic_ct(io.read(data / "volumes" / "ct-abdomen.nii.gz")[0], slices=20 if quick else 300,
                       size=128 if quick else 512)
    rows = []
    for name, path in api.bundled_weights().items():
        if read_config(path)["model"].get("task", "segmentation") != "segmentation":
            continue
        pred = api.load(name, device=device.type, runtime="torch")
        api.segment(vol, predictor=pred, force=True)  # warm-up (kernels, allocator)
        _sync(device)
        t = time.perf_counter()
        api.segment(vol, predictor=pred, force=True)
        _sync(device)
        rows.append({"model": name, "slices": int(np.shape(vol.data)[2]), "seconds": time.perf_counter() - t,
                     "precision": pred.precision.name, "batch": pred.last_batch_size})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", default="paper", choices=models.SIZES)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small inputs and volume: a smoke test of the code paths")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --device cpu --quick for a smoke test")
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
    import tempfile

    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        out["devices"] = devices_section(device, data, Path(tmp), args.quick)
    print(out["devices"], flush=True)
    out["networks"] = [r for name in models.REGISTRY for r in network_section(name, args.size, device, data,
                                                                                args.steps, args.quick)]
    out["volumes"] = volume_section(device, data, args.quick)
    save_json(ROOT / "benchmarks" / "results" / ("gpu_check.json" if device.type == "cuda" else "gpu_check_cpu.json"),
              out)
    print_table(["network", "size", "autocast", "batch x px", "steps/s", "peak MB", "cosine to fp64 (worst group)",
                 f">= {THRESHOLD}"],
                [[r["network"], r["size"], r["dtype"], f"{r['batch']} x {r['input']}", f"{r['steps_per_s']:.2f}",
                  f"{r['peak_mb']:.0f}", f"{min(r['cosines'].values()):.4f} ({min(r['cosines'], key=r['cosines'].get)})",
                  "yes" if r["passes"] else "no"] for r in out["networks"]])
    print_table(["bundled model", "slices", "seconds", "precision", "batch"],
                [[r["model"], r["slices"], f"{r['seconds']:.1f}", r["precision"], r["batch"]] for r in out["volumes"]])


if __name__ == "__main__":
    main()
