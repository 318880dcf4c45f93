"""Train, evaluate and bundle one recipe from recipes/*.json.

    .venv/bin/python scripts/recipe.py recipes/hourglass-spine-discs.json train      # resumable: add --resume
    .venv/bin/python scripts/recipe.py recipes/hourglass-spine-discs.json bundle     # evaluate on test, copy into the package

Data come from $NAPARI_MEDSEG_DATA_DIR (default ../shared/data). The run folder is runs/<name>.
`bundle` writes napari_medseg/weights/<name>/ (model.safetensors + config.json with a model card: data and
split, recipe, input size, wall time, hardware, test metrics, licence).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    recipe_path, action = Path(sys.argv[1]), sys.argv[2]
    extra = sys.argv[3:]
    recipe = json.loads(recipe_path.read_text())
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data")) / recipe["dataset"]
    run = ROOT / "runs" / recipe["name"]
    if action == "train":
        cmd = [sys.executable, "-m", "napari_medseg.cli", "train", "--data", str(data), "--out", str(run),
               *recipe["train"], *extra]
        return subprocess.call(cmd)
    if action != "bundle":
        raise SystemExit("action must be train or bundle")
    from napari_medseg import api
    from napari_medseg.engine import checkpoint as ckpt

    result = api.evaluate(str(data), weights=str(run / "best"), subset="test", device="cpu", precision="fp32")
    history = json.loads((run / "history.json").read_text())
    cfg = ckpt.read_config(run / "best")
    target = ROOT / "napari_medseg" / "weights" / recipe["name"]
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy(run / "best" / "model.safetensors", target / "model.safetensors")
    cfg["card"] = {
        "name": recipe["name"], "about": recipe["about"], "dataset": recipe["dataset"],
        "split": "split.json of the dataset (train / val / test stems)", "recipe": recipe["train"],
        "epochs_trained": len(history), "best_epoch": cfg.get("epoch"),
        "train_wall_s": round(sum(h["seconds"] for h in history), 1),
        "hardware": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {cfg['software']['torch']}",
        "test_metrics": result["mean"], "test_precision": result["precision"], "licence": recipe["licence"],
        "reproduce": f"NAPARI_MEDSEG_DATA_DIR=../shared/data napari-medseg evaluate --model {recipe['name']} "
                     f"--data ../shared/data/{recipe['dataset']}",
    }
    cfg["training"]["out"] = f"runs/{recipe['name']}"
    cfg["data"]["root"] = recipe["dataset"]
    (target / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    print(json.dumps(cfg["card"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
