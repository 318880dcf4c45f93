"""Markdown tables (per field of view, per level, per source, per case) from a disc-labeling evaluation
written by ``napari-medseg evaluate --json`` (with ``--fov-crops``: a row per crop too):

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/napari-medseg evaluate --model hourglass-spine-discs \\
        --data ../shared/data/spine-discs --json discs-test.json
    .venv/bin/python scripts/disc_tables.py discs-test.json
"""

from __future__ import annotations

import json
import sys


def mm(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def rate(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(path: str) -> int:
    result = json.loads(open(path).read())
    m = result["mean"]
    cases = result["cases"]
    whole = [c for c in cases if c.get("crop", "whole") == "whole"]
    print(f"{result['subset']} split ({len(whole)} scans): median L2 {mm(m['l2_mm'])} mm in the sagittal plane, "
          f"{mm(m.get('l2_3d_mm'))} mm in 3-D over {m['n_true']} labelled discs{' (whole and cropped)' if len(whole) < len(cases) else ''}, "
          f"misses {m['misses']} ({m['fnr']:.1%}), false positives {m['false_positives']} ({m['fpr']:.1%}), "
          f"unscored {m['unscored']}, scans numbered a level off {m['off_by_levels']} (silent {m.get('silent_shifts')}), "
          f"flagged {m['flagged']} (precision {rate(m.get('flag_precision'))}, recall {rate(m.get('flag_recall'))}), "
          f"levels in doubt {m.get('levels_flagged', '-')} (precision {rate(m.get('levels_flag_precision'))}, recall "
          f"{rate(m.get('levels_flag_recall'))}, shifts without a levels doubt {m.get('silent_level_shifts', '-')})\n")
    if "per_crop" in m:
        print("| field of view | scans | labelled discs | median L2 (mm) | 3-D (mm) | misses | false positives "
              "| numbered a level off | of them without a levels doubt | levels in doubt | precision | recall "
              "| any flag |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in m["per_crop"].items():
            print(f"| {name} | {r['cases']} | {r['n_true']} | {mm(r['l2_mm'])} | {mm(r.get('l2_3d_mm'))} | "
                  f"{r['misses']} | {r['false_positives']} | {r['off_by_levels']} | {r.get('silent_level_shifts', '-')} | "
                  f"{r.get('levels_flagged', '-')} | {rate(r.get('levels_flag_precision'))} | "
                  f"{rate(r.get('levels_flag_recall'))} | {r['flagged']} |")
        print()
    print("| level | labelled discs | median L2 (mm) | 3-D (mm) | misses |")
    print("|---|---|---|---|---|")
    for name, r in m["per_level"].items():
        print(f"| {name} | {r['n']} | {mm(r['l2_mm'])} | {mm(r.get('l2_3d_mm'))} | {r['misses']} |")
    print("\n| source | scans | labelled discs | median L2 (mm) | 3-D (mm) | misses | false positives | numbered a level off "
          "| flagged |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in m["per_source"].items():
        print(f"| {name} | {r['cases']} | {r['n_true']} | {mm(r['l2_mm'])} | {mm(r.get('l2_3d_mm'))} | "
              f"{r['misses']} ({r['fnr']:.0%}) | {r['false_positives']} | {r['off_by_levels']} | {r['flagged']} |")
    print("\n| scan | field of view | labelled | named by the model | median L2 (mm) | misses | level shift | levels "
          "| verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        names = ", ".join(p["name"] for p in c["predicted"])
        verdict = c.get("verdict", "")
        print(f"| {c['stem']} | {c.get('crop', 'whole')} | {c['n_true']} | {names} | {mm(c['l2_mm'])} | {c['fn']} | "
              f"{c.get('shift') if c.get('shift') is not None else '-'} | "
              f"{'ok' if c.get('levels', 'ok') == 'ok' else 'doubt'} | "
              f"{'ok' if verdict == 'ok' else verdict[:90] + ('...' if len(verdict) > 90 else '')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
