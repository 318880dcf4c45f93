"""Score a training run the way `scripts/recipe.py ... bundle` chooses its checkpoint, without bundling it:
the better of best/ and last/ on the validation split, then that one on the test split (fp32).

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python scripts/score_run.py ../runs/lstmsa-acdc-convlstm ../shared/data/acdc
    ... score_run.py RUN DATA --train-fit 150     # also: how well the picked checkpoint fits 150 of its training cases

Writes <run>/scores.json and prints one line.
"""

import json
import sys

from napari_medseg import api


def main() -> int:
    run, data = sys.argv[1], sys.argv[2]
    fit = int(sys.argv[sys.argv.index("--train-fit") + 1]) if "--train-fit" in sys.argv else 0
    out = {}
    for which in ("best", "last"):
        out[which] = {"val": api.evaluate(data, weights=f"{run}/{which}", subset="val", device="cpu",
                                          precision="fp32")["mean"]}
    pick = max(("best", "last"), key=lambda w: out[w]["val"]["dice"])
    test = api.evaluate(data, weights=f"{run}/{pick}", subset="test", device="cpu", precision="fp32")
    history = json.load(open(f"{run}/history.json"))
    out.update(picked=pick, test=test["mean"], split=test["split"], epochs=len(history),
               wall_s=round(sum(h["seconds"] for h in history), 1))
    if fit:  # the run's own training cases (the first `fit` of its split): under- or over-fitting
        out["train_fit"] = api.evaluate(data, weights=f"{run}/{pick}", subset="train", max_cases=fit, device="cpu",
                                        precision="fp32")["mean"]
    with open(f"{run}/scores.json", "w") as fh:
        json.dump(out, fh, indent=1)
    m = test["mean"]
    print(run, pick, "val", round(out[pick]["val"]["dice"], 4), "test",
          {k: round(m[k], 4) for k in ("dice", "iou", "hd95")}, m.get("dice_per_class"), out["wall_s"],
          "train fit dice", round(out["train_fit"]["dice"], 4) if fit else "-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
