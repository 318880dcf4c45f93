"""Markdown tables (per level, per source, per case) from a disc-labeling evaluation written by
``napari-medseg evaluate --json``:

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/napari-medseg evaluate --model hourglass-spine-discs \\
        --data ../shared/data/spine-discs --json discs-test.json
    .venv/bin/python scripts/disc_tables.py discs-test.json
"""

from __future__ import annotations

import json
import sys


def mm(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(path: str) -> int:
    result = json.loads(open(path).read())
    m = result["mean"]
    print(f"{result['subset']} split ({m['cases']} scans, {m['n_true']} labelled discs): median L2 {mm(m['l2_mm'])} mm, "
          f"misses {m['misses']} ({m['fnr']:.1%}), false positives {m['false_positives']} ({m['fpr']:.1%}), "
          f"unscored {m['unscored']}, scans numbered a level off {m['off_by_levels']}, flagged {m['flagged']}\n")
    print("| level | labelled discs | median L2 (mm) | misses |")
    print("|---|---|---|---|")
    for name, r in m["per_level"].items():
        print(f"| {name} | {r['n']} | {mm(r['l2_mm'])} | {r['misses']} |")
    print("\n| source | scans | labelled discs | median L2 (mm) | misses | false positives | numbered a level off | flagged |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in m["per_source"].items():
        print(f"| {name} | {r['cases']} | {r['n_true']} | {mm(r['l2_mm'])} | {r['misses']} ({r['fnr']:.0%}) | "
              f"{r['false_positives']} | {r['off_by_levels']} | {r['flagged']} |")
    print("\n| scan | labelled | named by the model | median L2 (mm) | misses | verdict |")
    print("|---|---|---|---|---|---|")
    for c in result["cases"]:
        names = ", ".join(p["name"] for p in c["predicted"])
        verdict = c.get("verdict", "")
        print(f"| {c['stem']} | {c['n_true']} | {names} | {mm(c['l2_mm'])} | {c['fn']} | "
              f"{'ok' if verdict == 'ok' else verdict[:90] + ('...' if len(verdict) > 90 else '')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
