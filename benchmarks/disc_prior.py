"""One named disc fixes the numbering on scans that miss the levels the disc model was trained on.

The bundled ``hourglass-spine-discs`` on every test scan of ``spine-discs``, whole and cut to its lower
``--keep`` fraction along axis 0 (head to feet: the top discs are gone, a field it never saw; run with
``force=True`` past the input check), without and with one named disc: the lowest reference disc inside
the crop, standing in for the user's click (``api.label_discs(prior=...)``, ``label-discs --prior``).
A reference disc counts as named right when the prediction nearest to it has its name and lies within
10 mm of it.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/disc_prior.py [--keep 0.6]

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=float, default=0.6)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "disc_prior.json"))
    args = ap.parse_args()
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data")) / "spine-discs"
    rows = []
    warnings.simplefilter("ignore")  # the crops are flagged for checking; that is expected here
    for stem in json.loads((data / "split.json").read_text())["test"]:
        vol = io.read_nifti(data / "images" / f"{stem}.nii.gz")
        truth = io.read_points(data / "labels" / f"{stem}_labels-disc.nii.gz")
        for label, keep in (("whole", 1.0), (f"lower {args.keep:.0%}", args.keep)):
            start = int(round(vol.data.shape[0] * (1 - keep)))
            shift = np.eye(4)
            shift[0, 3] = start
            crop = io.Volume(vol.data[start:], vol.affine @ shift, name=stem)
            inv = np.linalg.inv(crop.affine)
            inside = [d for d in truth.discs if 0 <= (inv @ np.r_[d.world, 1.0])[0] <= crop.data.shape[0] - 1]
            plain = api.label_discs(crop, model="hourglass-spine-discs", device="cpu", force=True)
            marked = io.DiscPoints([max(inside, key=lambda d: d.number)], crop.affine)
            fixed = api.label_discs(crop, model="hourglass-spine-discs", device="cpu", force=True, prior=marked)
            rows.append({"scan": stem, "field": label, "reference": [d.name for d in inside],
                         "predicted": [d.name for d in plain.discs], "with_named_disc": [d.name for d in fixed.discs],
                         "right": named_right(plain, inside), "right_with_named_disc": named_right(fixed, inside),
                         "discs": len(inside)})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| field | reference discs | named right by the model | named right with one named disc | "
          "of them, the discs the person did not name |")
    print("|---|---|---|---|---|")
    for field in dict.fromkeys(r["field"] for r in rows):
        sel = [r for r in rows if r["field"] == field]
        n, plain, fixed = (sum(r[k] for r in sel) for k in ("discs", "right", "right_with_named_disc"))
        others = fixed - len(sel)  # the named disc itself is right by construction (the reference's point)
        print(f"| {field} ({len(sel)} scans) | {n} | {plain} ({plain / n:.0%}) | {fixed} ({fixed / n:.0%}) | "
              f"{others} of {n - len(sel)} |")


if __name__ == "__main__":
    main()
