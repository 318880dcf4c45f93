"""Fine-tuning a disc model on a few scans of a new site vs training from scratch on the same scans.

The "new site" is ``spine-discs``' multi-site lumbar set (``spine_vb1_*``: T1, T2 and TIRM, labelled down to
L5/S1); the model that never saw it is the disc model bundled before that set existed (``--init-commit``,
taken from git: it names T11/T12 ... L4/L5, so fine-tuning re-initialises its heatmap heads for the 8 levels
T10/T11 ... L5/S1). For N in ``--sizes``, the first N ``vb1`` training cases train (a) fine-tuned from that
model (``train --init``: the engine's fine-tuning learning rate, 1e-4) and (b) from scratch (the recipe's
2.5e-4), both for ``--epochs`` epochs at 128 px with the disc recipe's augmentation and level balancing,
fp32, seed 0; both keep their last checkpoint. Scored on the two ``vb1`` scans no run trains on (the
validation and the test scan, 15 discs) and on the whole ``spine-discs`` test split (forgetting).

    NAPARI_MEDSEG_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/disc_finetune.py [--sizes 3 6]

Writes benchmarks/results/disc_finetune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from napari_medseg import api
from napari_medseg.engine.train import TrainOptions, train

ROOT = Path(__file__).resolve().parents[1]
OLD_MODEL = "napari_medseg/weights/hourglass-spine-discs"


def old_weights(commit: str, dst: Path) -> Path:
    """The bundled disc model of ``commit`` (before the multi-site set), written to ``dst``."""
    dst.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{OLD_MODEL}/{name}"], check=True,
                              capture_output=True).stdout
        (dst / name).write_bytes(blob)
    return dst


def site_folder(src: Path, dst: Path, train_stems: list[str], held_out: list[str]) -> Path:
    for sub in ("images", "labels"):
        (dst / sub).mkdir(parents=True)
    for stem in train_stems + held_out:
        os.symlink(src / "images" / f"{stem}.nii.gz", dst / "images" / f"{stem}.nii.gz")
        os.symlink(src / "labels" / f"{stem}_labels-disc.nii.gz", dst / "labels" / f"{stem}_labels-disc.nii.gz")
    # validation only reports (the last checkpoint is scored); both held-out scans are scored below
    (dst / "split.json").write_text(json.dumps({"train": train_stems, "val": held_out, "test": held_out}))
    return dst


def score(weights: str, site: Path, shared: Path) -> dict:
    new = api.evaluate(str(site), weights=weights, subset="test", split="folder", device="cpu", precision="fp32")["mean"]
    whole = api.evaluate(str(shared / "spine-discs"), weights=weights, subset="test", split="folder", device="cpu",
                         precision="fp32")["mean"]
    keep = ("l2_mm", "fnr", "fpr", "misses", "n_true", "off_by_levels", "flagged")
    return {"new_site": {k: new[k] for k in keep}, "l5s1": new["per_level"].get("L5/S1"),
            "test_split": {k: whole[k] for k in keep}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 6])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--init-commit", default="d26f655", help="commit whose bundled disc model never saw the new site")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "disc_finetune.json"))
    args = ap.parse_args()
    shared = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
    split = json.loads((shared / "spine-discs" / "split.json").read_text())
    site_train = [s for s in split["train"] if s.startswith("spine_vb1_")]
    held_out = [s for s in split["val"] + split["test"] if s.startswith("spine_vb1_")]
    results = {"epochs": args.epochs, "init_commit": args.init_commit, "held_out": held_out, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        init = old_weights(args.init_commit, tmp / "old")
        row = {"scans": 0, "start": f"bundled model of {args.init_commit}, as it is", **score(str(init), site_folder(
            shared / "spine-discs", tmp / "site0", site_train[:1], held_out), shared)}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        for n in args.sizes:
            site = site_folder(shared / "spine-discs", tmp / f"site{n}", site_train[:n], held_out)
            for start, init_from in (("fine-tuned", str(init)), ("from scratch", None)):
                t0 = time.perf_counter()
                res = train(TrainOptions(model="hourglass", data=str(site), out=str(tmp / f"run-{n}-{start[:4]}"),
                                         epochs=args.epochs, input_size=128, precision="fp32", seed=0, init=init_from))
                row = {"scans": n, "start": start, "cases": site_train[:n], "wall_s": round(time.perf_counter() - t0, 1),
                       "lr": 1e-4 if init_from else 2.5e-4, **score(res["last_checkpoint"], site, shared)}
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print("\n| training scans of the new site | start | held-out new-site scans: median L2 mm | misses | L5/S1 L2 mm "
          "| whole test split: median L2 mm | misses | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    def mm(v):
        return "-" if v is None or v != v else f"{v:.2f}"

    for r in results["rows"]:
        a, t, l5 = r["new_site"], r["test_split"], r["l5s1"] or {}
        print(f"| {r['scans']} | {r['start']} | {mm(a['l2_mm'])} | {a['misses']} of {a['n_true']} | "
              f"{mm(l5.get('l2_mm'))} | {mm(t['l2_mm'])} | {t['misses']} of {t['n_true']} | {r.get('wall_s', '-')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
