"""A 300-slice 512x512 CT through every bundled segmentation model, end to end as `predict` runs it (read
the NIfTI, preprocess, network, labels, write), with each stage's share, for each inference runtime.

The volume is the CT sample (``volumes/ct-abdomen.nii.gz``) upsampled in-plane to 512x512 and cycled to 300
slices (``benchmarks/inference.py::synthetic_ct``), written once as a NIfTI; each model segments it
through ``api.batch`` (``force=True``: the bundled models were trained on other images, the timing does
not depend on it). Stages are timed by wrapping the engine's own functions (nothing is re-implemented
here): ``io.read`` (read), ``Preprocessing.volume_slices`` + ``volume_samples`` (preprocess),
``Predictor._forward`` (network), ``preprocess.resize`` + ``infer.class_argmax`` (labels), the NIfTI
writer (write). Median of ``--repeats`` runs after a warm-up on a 12-slice cut of the same volume (which
also pays the ONNX export once: it is cached per weights and shape).

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/whole_volume.py --threads 2

Writes benchmarks/results/whole_volume.json and prints a Markdown table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from napari_medseg import api, io
from napari_medseg.engine import infer
from napari_medseg.engine import preprocess as pp
from napari_medseg.engine.config import read_config

try:
    from _report import print_table, save_json
    from inference import synthetic_ct
except ImportError:  # run as a module
    from benchmarks._report import print_table, save_json
    from benchmarks.inference import synthetic_ct

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("read", "preprocess", "network", "labels", "write")


@contextlib.contextmanager
def stage_timers(spent: dict):
    """Wrap the engine's functions so that the time inside each lands in ``spent[stage]``."""
    targets = [(io, "read", "read"), (pp.Preprocessing, "volume_slices", "preprocess"),
               (pp.Preprocessing, "volume_samples", "preprocess"), (infer.Predictor, "_forward", "network"),
               (pp, "resize", "labels"), (infer, "class_argmax", "labels"), (io, "write_nifti", "write")]
    saved = []
    depth = defaultdict(int)

    def wrap(fn, stage):
        def timed(*a, **k):
            depth[stage] += 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                depth[stage] -= 1
                if depth[stage] == 0:  # nested calls of one stage count once
                    spent[stage] += time.perf_counter() - t
        return timed

    for owner, name, stage in targets:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        saved.append((owner, name, original))
        setattr(owner, name, wrap(original, stage))
    try:
        yield spent
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def run(model: str, runtime: str, path: Path, out: Path) -> tuple[float, dict]:
    spent = defaultdict(float)
    with stage_timers(spent):
        t = time.perf_counter()
        done = api.batch([path], out, model=model, runtime=runtime, force=True, overwrite=True, device="cpu")
        total = time.perf_counter() - t
    if len(done["written"]) != 1:
        raise RuntimeError(f"{model}: {done['skipped']}")
    return total, dict(spent)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--runtimes", nargs="*", default=["torch", "onnxruntime"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))
    bundled = api.bundled_weights()
    names = args.models or sorted(n for n, p in bundled.items()
                                  if read_config(p)["model"].get("task", "segmentation") == "segmentation")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path, warm = Path(tmp) / "ct-300.nii.gz", Path(tmp) / "ct-12.nii.gz"
        vol = synthetic_ct(io.read(data / "volumes" / "ct-abdomen.nii.gz")[0])
        io.write_nifti(path, vol.data, vol.affine)
        io.write_nifti(warm, vol.data[..., :12], vol.affine)
        for name in names:
            for rt in args.runtimes:
                run(name, rt, warm, Path(tmp) / "out")  # warm-up (and the export, once)
                results = [run(name, rt, path, Path(tmp) / "out") for _ in range(args.repeats)]
                k = sorted(range(len(results)), key=lambda i: results[i][0])[len(results) // 2]
                total, spent = results[k]
                row = {"model": name, "runtime": rt, "seconds": total,
                       "all_seconds": [r[0] for r in results],
                       "shares": {s: spent.get(s, 0.0) / total for s in STAGES}}
                row["shares"]["other"] = max(0.0, 1.0 - sum(row["shares"].values()))
                rows.append(row)
                print(row, flush=True)
    save_json(ROOT / "benchmarks" / "results" / "whole_volume.json",
              {"threads": args.threads, "repeats": args.repeats, "volume": "300 x 512 x 512", "rows": rows})
    print_table(["bundled model", "runtime", "300-slice CT (s, median)", *STAGES, "other"],
                [[r["model"], r["runtime"], f"{r['seconds']:.1f}",
                  *(f"{r['shares'][s] * 100:.0f} %" for s in (*STAGES, "other"))] for r in rows])
    by = {(r["model"], r["runtime"]): r["seconds"] for r in rows}
    for name in names:
        if (name, "torch") in by and (name, "onnxruntime") in by:
            print(f"{name}: onnxruntime {by[(name, 'torch')] / by[(name, 'onnxruntime')]:.2f}x eager end to end")


if __name__ == "__main__":
    main()
