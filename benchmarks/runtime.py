"""Inference runtimes per bundled model: eager PyTorch fp32 against the same network exported to ONNX and
run by onnxruntime (CPU execution provider), for speed and for sameness of the result.

For each bundled model, on real inputs of its own test split (``--cases`` of them):

1. sameness: the labels of ``Predictor(runtime="onnxruntime")`` against ``Predictor(runtime="torch",
   precision="fp32")`` (fraction of identical pixels/voxels over all cases; the rule for choosing a
   runtime is >= 99.9 %), and for disc models the largest distance between the discs both find (rule:
   <= 0.5 px in the network's view);
2. speed: the network call alone at the model's input shape and batch 2, eager fp32 and onnxruntime
   interleaved round robin in this process, one warm-up, median of ``--repeats``; the ratio is eager /
   onnxruntime (> 1: onnxruntime faster);
3. end to end (``--folder N``): ``napari-medseg predict`` in a fresh process over a folder of N Kvasir-SEG
   images with ``unet-kvasir-192`` and ``bilateral-kvasir-192``, ``--runtime torch`` against ``auto``,
   alternated, median of ``--folder-repeats``; with ``--precision fp32`` (auto on a CPU without bf16) and
   the default precision (the export is cached before). ``--skip-network`` runs only this part.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/runtime.py --threads 2

Writes benchmarks/results/runtime.json (and runtime_folder.json) and prints a Markdown table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_medseg import api, io
from napari_medseg.engine import data as D
from napari_medseg.engine import devices
from napari_medseg.engine.config import read_config

try:
    from _report import print_table, save_json
except ImportError:  # run as a module
    from benchmarks._report import print_table, save_json

ROOT = Path(__file__).resolve().parents[1]
SAME_PIXELS = 0.999
DISC_PX = 0.5


def _cases(dataset: Path, n: int) -> list[Path]:
    layout = D.discover(dataset)
    stems = D.split(layout)["test"][:n]
    return [layout.pairs[s][0] for s in stems]


def sameness(name: str, data_root: Path, n: int) -> dict:
    card = read_config(api.bundled_weights()[name]).get("card", {})
    eager = api.load(name, device="cpu", precision="fp32", runtime="torch")
    graph = api.load(name, device="cpu", precision="fp32", runtime="onnxruntime")
    files = _cases(data_root / card["dataset"], n)
    if eager.task == "keypoints":
        worst, matched, missing = 0.0, 0, 0
        for f in files:
            vol = io.read(f)[0]
            a, b = eager.label_discs(vol), graph.label_discs(vol)
            pa = dict(zip(a.numbers, a.voxels()))
            pb = dict(zip(b.numbers, b.voxels()))
            missing += len(set(pa) ^ set(pb))
            for k in set(pa) & set(pb):
                worst = max(worst, float(np.linalg.norm(pa[k] - pb[k])))
                matched += 1
        return {"cases": len(files), "discs": matched, "discs_not_in_both": missing, "max_disc_shift_vox": worst,
                "same": missing == 0 and worst <= DISC_PX}
    same = total = 0
    for f in files:
        vol = io.read(f)[0]
        la = np.asarray(api.segment(vol, predictor=eager).labels)
        lb = np.asarray(api.segment(vol, predictor=graph).labels)
        same += int((la == lb).sum())
        total += la.size
    return {"cases": len(files), "identical": same / total, "same": same / total >= SAME_PIXELS}


def speed(name: str, repeats: int) -> dict:
    eager = api.load(name, device="cpu", precision="fp32", runtime="torch")
    graph = api.load(name, device="cpu", precision="fp32", runtime="onnxruntime")
    shape = eager.sample_shape()
    x = torch.rand((2, *shape))
    t0 = time.perf_counter()
    net = graph._graph(shape)  # export (or the cache) and session start
    first = time.perf_counter() - t0
    runs = {"torch": lambda: eager.model(x), "onnxruntime": lambda: net(x)}
    if devices.cpu_has_fast_bf16():  # where auto would otherwise run eager bf16
        runs["torch_bf16"] = lambda: _bf16(eager.model, x)
    times = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(repeats):
            for k, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {"input": [2, *shape], "eager_ms": med["torch"], "onnxruntime_ms": med["onnxruntime"],
            "ratio": med["torch"] / med["onnxruntime"], "export_or_cache_s": first,
            "eager_bf16_ms": med.get("torch_bf16")}


def _bf16(model, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x)


def _predict(name: str, folder: Path, out: Path, runtime: str, precision: str, threads: int) -> tuple[float, str]:
    """One ``napari-medseg predict`` over ``folder`` in a fresh process, as a user runs it: (seconds, the
    "ran on ..." line it printed)."""
    cmd = [sys.executable, "-m", "napari_medseg.cli", "predict", "--model", name, "--device", "cpu",
           "--runtime", runtime, "--precision", precision, str(folder), "--out", str(out), "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    took = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    ran = next(line for line in res.stderr.splitlines() if line.startswith("ran on "))
    return took, ran


def _same_labels(a: Path, b: Path) -> float:
    same = total = 0
    for f in sorted(a.glob("*_seg.png")):
        la, lb = (np.asarray(io.read(p)[0].data) for p in (f, b / f.name))
        same += int((la == lb).sum())
        total += la.size
    return same / total


def end_to_end(name: str, data_root: Path, n: int, threads: int, repeats: int) -> list[dict]:
    """``predict --runtime torch`` against ``--runtime auto`` over a folder of ``n`` Kvasir images (the
    first ``n`` by name), each a fresh process (start-up, model load, reading, writing included), the two
    alternated, median of ``repeats``. Twice: with ``--precision fp32`` (what ``auto`` precision is on a
    CPU without AVX512-BF16/AMX, where ``--runtime auto`` takes the exported graph) and with the default
    ``--precision auto`` (on a bf16 CPU: eager bf16 for both). The ONNX export is cached before timing."""
    import tempfile

    layout = D.discover(data_root / "kvasir-seg")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for stem in sorted(layout.pairs)[:n]:
            src = layout.pairs[stem][0]
            (folder / src.name).symlink_to(src)
        api.load(name, device="cpu", runtime="onnxruntime")._graph((3, 192, 192))  # the export, once
        for precision in ("fp32", "auto"):
            times, ran = {"torch": [], "auto": []}, {}
            for _ in range(repeats):
                for rt in times:
                    took, ran[rt] = _predict(name, folder, Path(tmp) / rt, rt, precision, threads)
                    times[rt].append(took)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append({"model": name, "images": n, "precision": precision, "torch_s": med["torch"],
                         "auto_s": med["auto"], "ratio": med["torch"] / med["auto"], "torch_ran": ran["torch"],
                         "auto_ran": ran["auto"], "runs": times,
                         "identical": _same_labels(Path(tmp) / "torch", Path(tmp) / "auto")})
            print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", type=int, default=10, help="test cases per model for the sameness check")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--folder", type=int, default=0, help="also time `predict` over this many Kvasir images")
    ap.add_argument("--folder-repeats", type=int, default=3)
    ap.add_argument("--skip-network", action="store_true", help="only the end-to-end folder timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
    names = args.models or sorted(api.bundled_weights())
    rows = []
    for name in [] if args.skip_network else names:
        row = {"model": name, **speed(name, args.repeats), **sameness(name, data, args.cases)}
        rows.append(row)
        print(row, flush=True)
    folder = [r for m in ("unet-kvasir-192", "bilateral-kvasir-192") if args.folder
              for r in end_to_end(m, data, args.folder, args.threads, args.folder_repeats)]
    if rows:
        save_json(ROOT / "benchmarks" / "results" / "runtime.json",
                  {"threads": args.threads, "repeats": args.repeats, "rows": rows})
    if folder:
        save_json(ROOT / "benchmarks" / "results" / "runtime_folder.json",
                  {"threads": args.threads, "repeats": args.folder_repeats, "end_to_end": folder})
    print_table(["bundled model", "input", "eager fp32 (ms)", "onnxruntime (ms)", "ratio", "eager bf16 (ms)",
                 "same result"],
                [[r["model"], "x".join(map(str, r["input"])), f"{r['eager_ms']:.0f}", f"{r['onnxruntime_ms']:.0f}",
                  f"{r['ratio']:.2f}x", "-" if r.get("eager_bf16_ms") is None else f"{r['eager_bf16_ms']:.0f}",
                  (f"{r['identical'] * 100:.3f} % of {r['cases']} cases" if "identical" in r else
                   f"max {r['max_disc_shift_vox']:.2f} vox, {r['discs_not_in_both']} discs not in both")
                  + ("" if r["same"] else " (FAILS)")]
                 for r in rows])
    if folder:
        print_table(["bundled model", "images", "--precision", "--runtime torch (s)", "--runtime auto (s)", "ratio",
                     "auto ran", "identical labels"],
                    [[r["model"], r["images"], r["precision"], f"{r['torch_s']:.1f}", f"{r['auto_s']:.1f}",
                      f"{r['ratio']:.2f}x", r["auto_ran"].split(": ", 1)[1], f"{r['identical'] * 100:.3f} %"]
                     for r in folder])


if __name__ == "__main__":
    main()
