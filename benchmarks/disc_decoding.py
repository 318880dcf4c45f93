"""Choose the disc decoding settings of a checkpoint on its validation split (never on test).

Every combination of the anchor (L5/S1 alone, or the stronger of L4/L5 and L5/S1: engine/discs.py
``anchor_numbering``) and its confidence (and no anchoring at all), the position prior's weight,
the rule that flags a second L5/S1-like place (``second_ratio``, off or a fraction of the anchor's height)
and the low-confidence flag's threshold is scored on ``spine-discs``' validation scans, whole and cropped as
other protocols show the spine (engine/evaluate.py ``FOV_CROPS``: without the top, more sacrum in view).
The best has no silent level shift (a scan numbered a level off without a flag), then the fewest misses +
false positives + scans a level off, then the fewest flagged scans that were right (a flag on a right
answer costs a person's time), then the lowest median L2. The depth channels' left-right positions are kept
(``use_depth``) only when their median 3-D error on the same scans is below the middle slice's. The choice
is printed and, with ``--write``, recorded in
the checkpoint's config (``preprocessing.decoding``), where the Predictor takes it from. The network runs
once per view (its outputs are kept): only the decoding changes between rows. The table is what ran.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/disc_decoding.py CHECKPOINT [--write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from napari_medseg.engine import checkpoint as ckpt
from napari_medseg.engine.discs import DECODING
from napari_medseg.engine.evaluate import evaluate
from napari_medseg.engine.infer import Predictor

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = (0.3, 0.5, 2.0)  # 2.0: never anchored (heatmaps are <= ~1)
ANCHOR_LEVELS = ((25,), (24, 25))  # count from L5/S1 only, or from the stronger of L4/L5 and L5/S1
PRIOR_WEIGHTS = (0.0, 0.5, 1.0)
SECOND_RATIOS = (None, 0.25, 0.4, 0.6)
LOW_CONFIDENCE = (0.5, 0.3)
RENAMED_DOUBT = (False, True)  # is a renaming by the anchor itself a doubt about the levels?


def remember_outputs(pred: Predictor) -> None:
    """Keep the network's outputs per input, so that a grid over decoding settings runs it once per view."""
    forward, seen = pred._forward, {}

    def cached(x, tta=False):
        key = (hashlib.sha1(x.numpy().tobytes()).hexdigest(), tuple(x.shape), tta)
        if key not in seen:
            seen[key] = forward(x, tta)
        return seen[key]

    pred._forward = cached


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--write", action="store_true", help="record the best settings in the checkpoint's config")
    ap.add_argument("--json", default=None, help="write every row here")
    args = ap.parse_args()
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data")) / "spine-discs"
    pred = Predictor.from_checkpoint(args.checkpoint, device="cpu", precision="fp32", runtime="torch")
    remember_outputs(pred)
    rows = []
    grid = [(a, lv) for a in ANCHORS for lv in ANCHOR_LEVELS if a <= 1 or lv == ANCHOR_LEVELS[0]]
    for anchor, levels in grid:
        for weight in PRIOR_WEIGHTS:
            for second in SECOND_RATIOS:
                for low in LOW_CONFIDENCE:
                    for renamed in RENAMED_DOUBT:
                        pred.pre["decoding"] = {**DECODING, "anchor_confidence": anchor, "prior_weight": weight,
                                                "second_ratio": second, "low_confidence": low,
                                                "anchor_levels": list(levels), "renamed_doubt": renamed}
                        res = evaluate(pred, str(data), subset="val", split="folder", fov_crops=True)
                        m = res["mean"]
                        right_flagged = sum(c["verdict"] != "ok" and not c.get("shift") for c in res["cases"])
                        right_doubted = sum(c["levels"] != "ok" and not c.get("shift") for c in res["cases"])
                        rows.append({"anchor_confidence": anchor, "anchor_levels": list(levels),
                                     "prior_weight": weight, "second_ratio": second, "renamed_doubt": renamed,
                                     "low_confidence": low, "misses": m["misses"],
                                     "false_positives": m["false_positives"],
                                     "off_by_levels": m["off_by_levels"], "silent_shifts": m["silent_shifts"],
                                     "silent_level_shifts": m["silent_level_shifts"],
                                     "flagged": m["flagged"], "right_but_flagged": right_flagged,
                                     "levels_flagged": m["levels_flagged"], "right_but_doubted": right_doubted,
                                     "l2_mm": m["l2_mm"], "l2_3d_mm": m["l2_3d_mm"], "n_true": m["n_true"],
                                     "cases": m["cases"]})
    print(f"{rows[0]['cases']} validation scans and crops")
    print("| anchor | at confidence | prior weight | second reading rule | renaming a doubt | low confidence | misses "
          "| false positives | scans a level off | of them without a levels flag | levels flagged | of them right "
          "| any flag | of them right | median L2 (mm) | 3-D (mm) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def key(r):  # silent about the levels first (a shift whose only flag is one disc's confidence is silent)
        return (r["silent_level_shifts"], r["silent_shifts"], r["misses"] + r["false_positives"] + r["off_by_levels"],
                r["right_but_doubted"], r["right_but_flagged"], round(r["l2_mm"], 3),
                -r["anchor_confidence"] if r["anchor_confidence"] <= 1 else 0)

    for r in sorted(rows, key=key)[:25]:
        anchor = "never" if r["anchor_confidence"] > 1 else r["anchor_confidence"]
        at = "-" if r["anchor_confidence"] > 1 else " or ".join(
            {24: "L4/L5", 25: "L5/S1"}[lv] for lv in sorted(r["anchor_levels"], reverse=True))
        print(f"| {at} | {anchor} | {r['prior_weight']} | {r['second_ratio'] or 'off'} | "
              f"{'yes' if r['renamed_doubt'] else 'no'} | {r['low_confidence']} | "
              f"{r['misses']} of {r['n_true']} | {r['false_positives']} | {r['off_by_levels']} | "
              f"{r['silent_level_shifts']} | {r['levels_flagged']} | {r['right_but_doubted']} | "
              f"{r['flagged']} | {r['right_but_flagged']} | {r['l2_mm']:.2f} | {r['l2_3d_mm']:.2f} |")
    best = min(rows, key=key)
    choice = {**DECODING, **{k: best[k] for k in ("anchor_confidence", "anchor_levels", "prior_weight", "second_ratio",
                                                   "low_confidence", "renamed_doubt")}}
    # the depth channels' left-right positions against the middle slice, on the same scans: kept only where
    # they bring the 3-D error down (a model without depth channels keeps the middle slice either way)
    depth = {}
    for use in (True, False):
        pred.pre["decoding"] = {**choice, "use_depth": use}
        depth[use] = evaluate(pred, str(data), subset="val", split="folder", fov_crops=True)["mean"]["l2_3d_mm"]
    choice["use_depth"] = bool(pred.pre.get("depth")) and depth[True] < depth[False]
    print(f"3-D median error on val and its crops: depth channels {depth[True]:.2f} mm, middle slice {depth[False]:.2f} mm")
    print(f"\n(the 25 best of {len(rows)} rows) chosen on val and its crops: {json.dumps(choice)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows, "chosen": choice,
                                               "l2_3d_mm": {"depth": depth[True], "middle": depth[False]}},
                                              indent=1) + "\n")
    if args.write:
        cfg_path = Path(args.checkpoint) / "config.json"
        cfg = ckpt.read_config(args.checkpoint)
        cfg["preprocessing"]["decoding"] = {**choice, "chosen_on": "val + its field-of-view crops",
                                            "by": "benchmarks/disc_decoding.py"}
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        print(f"recorded in {cfg_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
