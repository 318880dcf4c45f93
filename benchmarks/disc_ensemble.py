"""Two disc checkpoints averaged (their heatmaps, view by view) scored as one model: is an ensemble of seeds
worth bundling? The decoding is chosen on the validation split and its crops by the rule of
``benchmarks/disc_decoding.py`` (levels doubts first, then misses + false positives + scans a level off,
then right scans in doubt) over a small grid (anchor confidence, anchor levels, position prior, renaming a
doubt); then the validation and test splits (with their crops) are scored with it.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/disc_ensemble.py CHECKPOINT_A CHECKPOINT_B \\
        --json ensemble   # writes ensemble-val.json and ensemble-test.json

The ensemble is not a mechanism of the package (a Predictor runs one network): this is a measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from napari_medseg.engine.evaluate import evaluate
from napari_medseg.engine.infer import Predictor

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--json", default=None, help="prefix of the <prefix>-val.json and <prefix>-test.json written")
    args = ap.parse_args()
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data")) / "spine-discs"
    a = Predictor.from_checkpoint(args.first, device="cpu", precision="fp32", runtime="torch")
    b = Predictor.from_checkpoint(args.second, device="cpu", precision="fp32", runtime="torch")
    fa, fb, seen = a._forward, b._forward, {}

    def both(x, tta=False):  # the mean of the two networks' outputs, once per view
        key = (hashlib.sha1(x.numpy().tobytes()).hexdigest(), tuple(x.shape), tta)
        if key not in seen:
            seen[key] = (fa(x, tta) + fb(x, tta)) / 2
        return seen[key]

    a._forward = both
    base = dict(a.pre.get("decoding") or {})
    best = None
    for conf in (0.3, 0.5):
        for levels in ([25], [24, 25]):
            for weight in (0.0, 0.5):
                for renamed in (False, True):
                    choice = {"anchor_confidence": conf, "anchor_levels": levels, "prior_weight": weight,
                              "renamed_doubt": renamed}
                    a.pre["decoding"] = {**base, **choice}
                    res = evaluate(a, str(data), subset="val", split="folder", fov_crops=True)
                    m = res["mean"]
                    doubted = sum(c["levels"] != "ok" and not c.get("shift") for c in res["cases"])
                    key = (m["silent_level_shifts"], m["silent_shifts"],
                           m["misses"] + m["false_positives"] + m["off_by_levels"], doubted)
                    print(choice, key, flush=True)
                    if best is None or key < best[0]:
                        best = (key, choice)
    print("chosen on val and its crops:", best[1])
    a.pre["decoding"] = {**base, **best[1]}
    for subset in ("val", "test"):
        res = evaluate(a, str(data), subset=subset, split="folder", fov_crops=True)
        res["ensemble"] = [str(args.first), str(args.second)]
        res["decoding"] = a.pre["decoding"]
        m = res["mean"]
        print(subset, {k: m[k] for k in ("off_by_levels", "silent_level_shifts", "misses", "false_positives",
                                         "levels_flagged", "levels_flag_precision", "l2_mm", "l2_3d_mm")})
        if args.json:
            Path(f"{args.json}-{subset}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
