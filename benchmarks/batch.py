"""Batch throughput and memory: the old one-by-one loop (no read-ahead) vs read-ahead vs 2 local Dask
workers, as ratios measured in one run on the same inputs, plus peak memory and a leak check.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/batch.py [--inputs 200] [--volumes 20]
        [--leak 1000] [--repeats 3]

Inputs: Kvasir-SEG test images (2D, the polyp model) repeated to ``--inputs`` files, and ``--volumes``
copies of ACDC test volumes (the cardiac model) in a second folder. Each mode writes into a fresh output
folder; the order of modes is rotated between repeats and medians are reported. Memory: the resident
set size of this process (the Dask workers' own memory is reported by Dask and not counted). The leak
check runs the read-ahead loop over ``--leak`` inputs and compares the RSS after 100 inputs with the RSS
at the end. Results go to benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from napari_medseg import api
from napari_medseg.engine import data as D

ROOT = Path(__file__).resolve().parents[1]


def _make_inputs(data: Path, tmp: Path, n2d: int, nvol: int) -> tuple[Path, Path]:
    images, volumes = tmp / "images", tmp / "volumes"
    images.mkdir()
    volumes.mkdir()
    kv = D.discover(data / "kvasir-seg")
    stems = D.split(kv)["test"]
    for i in range(n2d):
        src = kv.pairs[stems[i % len(stems)]][0]
        os.link(src, images / f"{i:05d}{src.suffix}") if os.stat(src).st_dev == os.stat(tmp).st_dev else \
            shutil.copy(src, images / f"{i:05d}{src.suffix}")
    ac = D.discover(data / "acdc")
    vstems = D.split(ac)["test"]
    for i in range(nvol):
        shutil.copy(ac.pairs[vstems[i % len(vstems)]][0], volumes / f"v{i:03d}.nii.gz")
    return images, volumes


class PeakRSS:
    """Sample this process's resident set size every 20 ms while a block runs."""

    def __enter__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def run_mode(mode: str, folder: Path, model: str, out: Path) -> tuple[float, int]:
    kw = {"sequential": {"prefetch": 0}, "read-ahead": {"prefetch": 2}, "dask-2": {"workers": 2}}[mode]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        summary = api.batch(str(folder), out, model=model, device="cpu", **kw)
        dt = time.perf_counter() - t0
    assert not summary["skipped"], summary["skipped"][:2]
    return dt, mem.peak


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=200)
    ap.add_argument("--volumes", type=int, default=20)
    ap.add_argument("--leak", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
    tmp = Path(tempfile.mkdtemp(prefix="medseg-batch-"))
    images, volumes = _make_inputs(data, tmp, args.inputs - args.volumes, args.volumes)
    modes = ["sequential", "read-ahead", "dask-2"]
    results: dict = {"inputs_2d": args.inputs - args.volumes, "volumes": args.volumes, "cpu_count": os.cpu_count(),
                     "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or None, "modes": {}}
    for folder, model in ((images, "unet-kvasir-192"), (volumes, "unet-acdc-300")):
        times = {m: [] for m in modes}
        peaks = {m: [] for m in modes}
        for r in range(args.repeats):
            for m in modes[r % 3:] + modes[: r % 3]:
                dt, peak = run_mode(m, folder, model, tmp / f"out-{folder.name}-{m}-{r}")
                times[m].append(dt)
                peaks[m].append(peak)
                print(f"{folder.name} {m} repeat {r}: {dt:.1f} s, peak RSS {peak / 2**20:.0f} MiB", flush=True)
        base = statistics.median(times["sequential"])
        results["modes"][folder.name] = {
            m: {"median_s": round(statistics.median(times[m]), 2),
                "speed_vs_sequential": round(base / statistics.median(times[m]), 3),
                "peak_rss_mib": round(max(peaks[m]) / 2**20)} for m in modes}
    # leak check: RSS after 100 inputs vs after --leak inputs, read-ahead loop over the 2D images
    leak_dir = tmp / "leak"
    leak_dir.mkdir()
    srcs = sorted(images.iterdir())
    for i in range(args.leak):
        os.link(srcs[i % len(srcs)], leak_dir / f"{i:05d}{srcs[i % len(srcs)].suffix}")
    proc, rss = psutil.Process(), {}

    def watch(event):
        if event.kind == "progress" and event.done in (100, args.leak):
            rss[event.done] = proc.memory_info().rss

    api.batch(str(leak_dir), tmp / "out-leak", model="unet-kvasir-192", device="cpu", callback=watch)
    results["leak"] = {"rss_after_100_mib": round(rss[100] / 2**20), f"rss_after_{args.leak}_mib":
                       round(rss[args.leak] / 2**20), "growth_mib": round((rss[args.leak] - rss[100]) / 2**20)}
    print(json.dumps(results, indent=1))
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "batch.json").write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
