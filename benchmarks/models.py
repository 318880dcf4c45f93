"""Network cost on CPU: forward and forward+backward time, peak memory, parameters, GFLOPs, and the
achieved GFLOP/s as a fraction of this machine's measured peak for a large convolution, in fp32 and
under bf16 autocast; every number also as a ratio to the U-Net baseline of the same size.

    .venv/bin/python benchmarks/models.py [--threads 2] [--out benchmarks/results/models.json] [--markdown]

Each (network, size) runs in its own subprocess so that peak memory (ru_maxrss growth during a
training step) belongs to that network alone. Inputs: batch 1, 256x256 (3 channels; LSTMSA 1 channel,
2D mode), channels_last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

try:
    from _timing import median_time
except ImportError:  # run as a module
    from benchmarks._timing import median_time

NAMES = ["unet", "lstmsa", "bilateral", "bcdunet", "hourglass"]
SIZES = ["small", "paper"]


def conv_peak(threads: int, repeats: int = 5) -> dict:
    """GFLOP/s of a large 3x3 convolution (256 -> 256 channels, 64x64, batch 4), fp32 and bf16."""
    import torch

    torch.set_num_threads(threads)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last).eval()
    x = torch.randn(4, 256, 64, 64).to(memory_format=torch.channels_last)
    flops = 2 * 4 * 64 * 64 * 256 * 256 * 9
    out = {}
    with torch.no_grad():
        out["fp32"] = flops / median_time(lambda: conv(x), repeats) / 1e9
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["bf16"] = flops / median_time(lambda: conv(x), repeats) / 1e9
    return out


def measure(name: str, size: str, threads: int, repeats: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_medseg import models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = models.build(name, size).to(memory_format=torch.channels_last)
    x = torch.randn(1, model.in_channels, 256, 256).to(memory_format=torch.channels_last)

    def main(out):
        if isinstance(out, dict):
            return out.get("stack_heatmaps", out.get("logits"))
        return out

    def train_step():
        model.zero_grad(set_to_none=True)
        main(model(x)).float().square().mean().backward()

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.train()
    train_step()
    peak_train_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    res = {"name": name, "size": size, "params": sum(p.numel() for p in model.parameters()),
           "peak_train_mb": round(peak_train_mb, 1)}
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    res["gflops_fwd"] = fc.get_total_flops() / 1e9
    model.train()
    with FlopCounterMode(display=False) as fc:
        train_step()
    res["gflops_fwdbwd"] = fc.get_total_flops() / 1e9
    for precision in ("fp32", "bf16"):
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else None

        def fwd():
            model.eval()
            with torch.no_grad():
                if ctx:
                    with ctx():
                        model(x)
                else:
                    model(x)

        def fwdbwd():
            model.train()
            if ctx:
                with ctx():
                    model.zero_grad(set_to_none=True)
                    loss = main(model(x)).float().square().mean()
                loss.backward()
            else:
                train_step()

        res[f"fwd_ms_{precision}"] = median_time(fwd, repeats) * 1e3
        res[f"fwdbwd_ms_{precision}"] = median_time(fwdbwd, repeats) * 1e3
    return res


def table(results: list[dict], peak: dict) -> str:
    base = {(r["name"], r["size"]): r for r in results}
    lines = [
        "| network | size | params (M) | GFLOPs fwd | fwd ms fp32 | fwd ms bf16 | fwd+bwd ms fp32 | fwd+bwd ms bf16 "
        "| peak train MB | % of conv peak fwd fp32 | % bf16 | fwd time / U-Net | GFLOPs / U-Net |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        u = base[("unet", r["size"])]
        eff32 = r["gflops_fwd"] / (r["fwd_ms_fp32"] / 1e3) / peak["fp32"] * 100
        eff16 = r["gflops_fwd"] / (r["fwd_ms_bf16"] / 1e3) / peak["bf16"] * 100
        lines.append(
            f"| {r['name']} | {r['size']} | {r['params'] / 1e6:.2f} | {r['gflops_fwd']:.1f} | {r['fwd_ms_fp32']:.0f} | "
            f"{r['fwd_ms_bf16']:.0f} | {r['fwdbwd_ms_fp32']:.0f} | {r['fwdbwd_ms_bf16']:.0f} | {r['peak_train_mb']:.0f} | "
            f"{eff32:.0f} | {eff16:.0f} | {r['fwd_ms_fp32'] / u['fwd_ms_fp32']:.2f} | "
            f"{r['gflops_fwd'] / u['gflops_fwd']:.2f} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="networks to run (default: all)")
    ap.add_argument("--sizes", nargs="*", default=SIZES)
    ap.add_argument("--out", default="benchmarks/results/models.json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.threads, args.repeats)))
        return
    t0 = time.time()
    peak_before = conv_peak(args.threads)
    results = []
    for size in args.sizes:
        for name in args.only or NAMES:
            out = subprocess.run([sys.executable, __file__, "--child", name, size, "--threads", str(args.threads),
                                  "--repeats", str(args.repeats)], check=True, capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{name:10s} {size:6s} fwd {r['fwd_ms_fp32']:8.1f} ms (bf16 {r['fwd_ms_bf16']:8.1f})  "
                  f"fwd+bwd {r['fwdbwd_ms_fp32']:8.1f} ms  {r['gflops_fwd']:7.2f} GFLOPs", flush=True)
    peak_after = conv_peak(args.threads)
    peak = {k: max(peak_before[k], peak_after[k]) for k in peak_before}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "conv_peak_gflops": peak,
                                          "results": results, "wall_s": round(time.time() - t0, 1)}, indent=1))
    print(f"\nlarge-conv peak: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s "
          f"(ratio {peak['bf16'] / peak['fp32']:.2f}); wall {time.time() - t0:.0f} s\n")
    print(table(results, peak))


if __name__ == "__main__":
    main()
