"""Choose the disc decoding settings of a checkpoint on its validation split (never on test).

For every combination of the L5/S1 anchor's confidence (and no anchoring at all) and the position prior's
weight, the checkpoint is scored on ``spine-discs``' validation scans with the evaluation's full metrics;
the best (fewest misses + false positives + scans numbered a level off, then the lowest median L2, then the
fewest flagged discs) is printed and, with ``--write``, recorded in the checkpoint's config (``preprocessing.decoding``), where the
Predictor takes it from. The table is what ran.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/disc_decoding.py CHECKPOINT [--write]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from napari_medseg.engine import checkpoint as ckpt
from napari_medseg.engine.discs import DECODING
from napari_medseg.engine.evaluate import evaluate
from napari_medseg.engine.infer import Predictor

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = (0.15, 0.2, 0.3, 0.4, 0.5, 2.0)  # 2.0: never anchored (heatmaps are <= ~1)
PRIOR_WEIGHTS = (0.0, 0.25, 0.5, 1.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--write", action="store_true", help="record the best settings in the checkpoint's config")
    args = ap.parse_args()
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data")) / "spine-discs"
    pred = Predictor.from_checkpoint(args.checkpoint, device="cpu", precision="fp32")
    rows = []
    for anchor in ANCHORS:
        for weight in PRIOR_WEIGHTS:
            pred.pre["decoding"] = {**DECODING, "anchor_confidence": anchor, "prior_weight": weight}
            m = evaluate(pred, str(data), subset="val", split="folder")["mean"]
            rows.append({"anchor_confidence": anchor, "prior_weight": weight, "misses": m["misses"],
                         "false_positives": m["false_positives"], "off_by_levels": m["off_by_levels"],
                         "flagged": m["flagged"], "flagged_discs": m["flagged_discs"], "l2_mm": m["l2_mm"],
                         "n_true": m["n_true"]})
    print("| L5/S1 anchor confidence | prior weight | misses | false positives | scans a level off | flagged scans "
          "| flagged discs | median L2 (mm) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        anchor = "never" if r["anchor_confidence"] > 1 else r["anchor_confidence"]
        print(f"| {anchor} | {r['prior_weight']} | {r['misses']} of {r['n_true']} | {r['false_positives']} | "
              f"{r['off_by_levels']} | {r['flagged']} | {r['flagged_discs']} | {r['l2_mm']:.2f} |")
    # fewest errors, then the lowest median L2, then the fewest flagged discs (a flag on a right answer costs a
    # person's time), then the strictest anchor
    best = min(rows, key=lambda r: (r["misses"] + r["false_positives"] + r["off_by_levels"], round(r["l2_mm"], 3),
                                    r["flagged_discs"], -r["anchor_confidence"] if r["anchor_confidence"] <= 1 else 0))
    choice = {**DECODING, "anchor_confidence": best["anchor_confidence"], "prior_weight": best["prior_weight"]}
    print(f"\nchosen on val: {json.dumps(choice)}")
    if args.write:
        cfg_path = Path(args.checkpoint) / "config.json"
        cfg = ckpt.read_config(args.checkpoint)
        cfg["preprocessing"]["decoding"] = {**choice, "chosen_on": "val", "by": "benchmarks/disc_decoding.py"}
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        print(f"recorded in {cfg_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
