"""One named disc fixes the numbering on scans that miss the levels the disc model was trained on.

The bundled ``hourglass-spine-discs`` on every validation and test scan of ``spine-discs``, whole and cut
to its lower ``--keep`` fraction along axis 0 (head to feet: the top discs are gone, a field it never saw;
run with ``force=True`` past the input check), without and with one named disc: the lowest reference disc
inside the field, standing in for the user's click (``api.label_discs(prior=...)``, ``label-discs --prior``).
A reference disc counts as named right when the prediction nearest to it has its name and lies within
10 mm of it. A scan is *numbered wrong* when a prediction within 10 mm of a reference disc carries another
name; it is *fixed* when, with the named disc, no prediction does.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/disc_prior.py [--keep 0.6] [--model NAME]

Writes benchmarks/results/disc_prior.json.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np

from napari_medseg import api, io

ROOT = Path(__file__).resolve().parents[1]


def named_right(points, reference: list) -> int:
    if not len(points):
        return 0
    got = 0
    for d in reference:
        k = int(np.argmin(np.linalg.norm(points.world - np.asarray(d.world), axis=1)))
        got += int(points.discs[k].number == d.number and np.linalg.norm(points.world[k] - d.world) < 10.0)
    return got


def misnamed(points, reference: list) -> int:
    """Predictions within 10 mm of a reference disc that carry another name."""
    bad = 0
    for d in points.discs:
        dist = [np.linalg.norm(np.asarray(d.world) - np.asarray(r.world)) for r in reference]
        if dist and min(dist) < 10.0 and reference[int(np.argmin(dist))].number != d.number:
            bad += 1
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=float, default=0.6)
    ap.add_argument("--model", default="hourglass-spine-discs", help="bundled weights or a checkpoint folder")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "disc_prior.json"))
    args = ap.parse_args()
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data")) / "spine-discs"
    weights = {"weights": args.model} if Path(args.model).is_dir() else {"model": args.model}
    rows = []
    warnings.simplefilter("ignore")  # the crops are flagged for checking; that is expected here
    split = json.loads((data / "split.json").read_text())
    for stem in split["val"] + split["test"]:
        vol = io.read_nifti(data / "images" / f"{stem}.nii.gz")
        truth = io.read_points(data / "labels" / f"{stem}_labels-disc.nii.gz")
        for label, keep in (("whole", 1.0), (f"lower {args.keep:.0%}", args.keep)):
            start = int(round(vol.data.shape[0] * (1 - keep)))
            shift = np.eye(4)
            shift[0, 3] = start
            crop = io.Volume(vol.data[start:], vol.affine @ shift, name=stem)
            inv = np.linalg.inv(crop.affine)
            inside = [d for d in truth.discs if 0 <= (inv @ np.r_[d.world, 1.0])[0] <= crop.data.shape[0] - 1]
            plain = api.label_discs(crop, device="cpu", force=True, **weights)
            marked = io.DiscPoints([max(inside, key=lambda d: d.number)], crop.affine)
            fixed = api.label_discs(crop, device="cpu", force=True, prior=marked, **weights)
            rows.append({"scan": stem, "field": label, "reference": [d.name for d in inside],
                         "predicted": [d.name for d in plain.discs], "with_named_disc": [d.name for d in fixed.discs],
                         "right": named_right(plain, inside), "right_with_named_disc": named_right(fixed, inside),
                         "misnamed": misnamed(plain, inside), "misnamed_with_named_disc": misnamed(fixed, inside),
                         "verdict": plain.verdict, "discs": len(inside)})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "keep": args.keep, "rows": rows}, indent=1) + "\n")
    print(f"\n{args.model}, {len(split['val'] + split['test'])} validation + test scans\n")
    print("| field | reference discs | named right by the model | named right with one named disc | "
          "of them, the discs the person did not name | scans numbered wrong | of them fixed by the named disc |")
    print("|---|---|---|---|---|---|---|")
    for field in dict.fromkeys(r["field"] for r in rows):
        sel = [r for r in rows if r["field"] == field]
        n, plain, fixed = (sum(r[k] for r in sel) for k in ("discs", "right", "right_with_named_disc"))
        others = fixed - len(sel)  # the named disc itself is right by construction (the reference's point)
        wrong = [r for r in sel if r["misnamed"]]
        mended = [r for r in wrong if not r["misnamed_with_named_disc"]]
        print(f"| {field} ({len(sel)} scans) | {n} | {plain} ({plain / n:.0%}) | {fixed} ({fixed / n:.0%}) | "
              f"{others} of {n - len(sel)} | {len(wrong)} | {len(mended)} |")


if __name__ == "__main__":
    main()
