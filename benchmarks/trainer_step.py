"""Training-step cost per network: the trainer's own step against a bare step, and the memory format.

    .venv/bin/python benchmarks/trainer_step.py [--threads 1] [--repeats 5] [--only unet hourglass]

For every network and size (BCDU-Net ``paper`` also in the published one-direction wiring), in its own
subprocess, these steps are timed interleaved (round robin, one warm-up each, median of ``--repeats``):

* ``bare``: forward, the trainer's loss, zero_grad, backward, optimizer step (the recipe's optimizer) with
  nothing around it, in fp32 and in the network's training precision (``--precision auto``: bf16 on CPUs
  with AVX512-BF16 where the network passes the gradient-fidelity test), each contiguous and
  channels_last;
* ``trainer``: :func:`napari_medseg.engine.train.train_step`, the function the training loop calls, with
  the memory format the trainer chooses (``models.REGISTRY[...].memory_format``), in fp32 and in the
  training precision.

Batch 2 at 256x256 (LSTMSA: 2.5D, three 256x256 slices), synthetic tensors of the shapes the trainer
feeds (the step's cost does not depend on the values), each variant on its own copy of the same
initial weights. Reported: milliseconds, the faster memory format, trainer / bare in the same precision
and format (target <= 1.05), and the trainer's step in training precision against the bare fp32
contiguous step of the same network (the speed-up bf16 and the layout buy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [("unet", "small", {}), ("unet", "paper", {}), ("bilateral", "small", {}), ("bilateral", "paper", {}),
           ("bcdunet", "small", {}), ("bcdunet", "paper", {"direction": "reverse"}), ("bcdunet", "paper", {}),
           ("hourglass", "small", {}), ("hourglass", "paper", {}), ("lstmsa", "small", {}), ("lstmsa", "paper", {})]


def measure(name: str, size: str, options: dict, repeats: int, batch: int = 2, px: int = 256) -> dict:
    import torch

    from napari_medseg import models
    from napari_medseg.engine.devices import select_precision
    from napari_medseg.engine.losses import build_loss
    from napari_medseg.engine.train import build_optimizer, choose_memory_format, train_step

    info = models.REGISTRY[name]
    device = torch.device("cpu")
    auto = select_precision(device, "auto", name)
    fp32 = select_precision(device, "fp32", name)
    recipe = info.recipe
    criterion = build_loss(recipe.get("loss", "dice_ce"), info.task)
    g = torch.Generator().manual_seed(0)
    probe = models.build(name, size, **options)
    if name == "lstmsa":
        image = torch.randn(batch, 3, probe.in_channels, px, px, generator=g)
    else:
        image = torch.randn(batch, probe.in_channels, px, px, generator=g)
    if info.task == "keypoints":
        k = probe.num_classes
        data = {"image": image, "target": torch.rand(batch, k, px, px, generator=g),
                "visible": torch.ones(batch, k, dtype=torch.bool)}
    else:
        classes = max(2, probe.num_classes)
        data = {"image": image, "target": torch.randint(0, classes, (batch, px, px), generator=g)}
    chosen = choose_memory_format(name, size, device)

    def make(fmt: str):
        torch.manual_seed(0)
        net = models.build(name, size, **options)
        if fmt == "channels_last":
            net = net.to(memory_format=torch.channels_last)
        net.train()
        return net, build_optimizer(net, recipe, recipe.get("lr", 1e-3))

    def bare(precision, fmt):
        net, opt = make(fmt)
        x = data["image"]
        if x.ndim == 4 and fmt == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)

        def step():
            with precision.autocast():
                out = net(x)
            loss = criterion(out, data["target"], data["visible"]) if info.task == "keypoints" else criterion(out, data["target"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def trainer(precision):
        net, opt = make(chosen)
        scaler = precision.grad_scaler()
        return lambda: train_step(net, batch=data, criterion=criterion, optimizer=opt, scaler=scaler,
                                  precision=precision, task=info.task, device=device,
                                  channels_last=chosen == "channels_last")

    variants = {"bare_fp32_contiguous": bare(fp32, "contiguous"), "bare_fp32_channels_last": bare(fp32, "channels_last"),
                "trainer_fp32": trainer(fp32)}
    if auto.dtype is not None:
        variants.update({"bare_auto_contiguous": bare(auto, "contiguous"),
                         "bare_auto_channels_last": bare(auto, "channels_last"), "trainer_auto": trainer(auto)})
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(repeats):
        for k, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    prec = auto.name if auto.dtype is not None else "fp32"
    key = "auto" if auto.dtype is not None else "fp32"
    faster = min(("contiguous", "channels_last"), key=lambda f: ms[f"bare_{key}_{f}"])
    return {"name": name, "size": size, "options": options, "training_precision": prec, "chosen_format": chosen,
            "faster_format": faster, "ms": {k: round(v, 1) for k, v in ms.items()},
            "trainer_over_bare": round(ms[f"trainer_{key}"] / ms[f"bare_{key}_{chosen}"], 3),
            "trainer_fp32_over_bare": round(ms["trainer_fp32"] / ms[f"bare_fp32_{chosen}"], 3),
            "speedup_vs_bare_fp32_contiguous": round(ms["bare_fp32_contiguous"] / ms[f"trainer_{key}"], 2)}


def table(rows: list[dict]) -> str:
    lines = ["| network | size | precision | bare fp32 contiguous | bare fp32 channels_last | bare bf16 contiguous "
             "| bare bf16 channels_last | faster / chosen format | trainer step (training precision) | trainer / bare "
             "| trainer fp32 / bare fp32 | speed-up vs bare fp32 contiguous |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["ms"]
        label = r["name"] + (" " + ",".join(f"{k}={v}" for k, v in r["options"].items()) if r["options"] else "")
        trainer = m.get("trainer_auto", m["trainer_fp32"])
        ms = lambda k: f"{m[k]:.0f}" if k in m else "-"  # noqa: E731
        lines.append(
            f"| {label} | {r['size']} | {r['training_precision']} | {ms('bare_fp32_contiguous')} | "
            f"{ms('bare_fp32_channels_last')} | {ms('bare_auto_contiguous')} | "
            f"{ms('bare_auto_channels_last')} | {r['faster_format']} / {r['chosen_format']} | "
            f"{trainer:.0f} | {r['trainer_over_bare']:.3f} | {r['trainer_fp32_over_bare']:.3f} | "
            f"{r['speedup_vs_bare_fp32_contiguous']:.2f}x |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=None, help="networks (default: all)")
    ap.add_argument("--sizes", nargs="*", default=["small", "paper"])
    ap.add_argument("--out", default="benchmarks/results/trainer_step.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        name, size, options = json.loads(args.child)
        print(json.dumps(measure(name, size, options, args.repeats)))
        return
    t0 = time.time()
    rows = []
    for name, size, options in CONFIGS:
        if (args.only and name not in args.only) or size not in args.sizes:
            continue
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps([name, size, options]),
                              "--threads", str(args.threads), "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True, env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(json.dumps(r), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "rows": rows, "wall_s": round(time.time() - t0)},
                                         indent=1) + "\n")
    print(f"\n{args.threads} thread(s), wall {time.time() - t0:.0f} s\n")
    print(table(rows))


if __name__ == "__main__":
    main()
