"""Train, evaluate and bundle one recipe from recipes/*.json.

    .venv/bin/python scripts/recipe.py recipes/hourglass-spine-discs.json train      # resumable: add --resume
    .venv/bin/python scripts/recipe.py recipes/hourglass-spine-discs.json bundle [best|last]
        # picks the checkpoint (default: whichever scores better on the validation split with the task's
        # full metrics), evaluates it on the test split, copies it into the package
    .venv/bin/python scripts/recipe.py recipes/lstmsa-acdc.json train --seed 1
        # a repeat with another seed: trains into <runs>/<name>-seed1 (score it with scripts/score_run.py)
    .venv/bin/python scripts/recipe.py recipes/unet-ph2-cosine.json bundle --seed 1 --as unet-ph2
        # bundle that seed's run, under another name (replacing the weights shipped under it)

Data come from $NAPARI_MEDSEG_DATA_DIR (default ../shared/data). The run folder is $NAPARI_MEDSEG_RUNS/<name>
(default runs/<name>; point it outside the checkout so a long run survives a fresh clone and continues with
`train --resume`).
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


def choose_on_val(api, data: Path, run: Path) -> str:
    """best/ is chosen by the training loop's quick metric; compare best/ and last/ on the validation split
    with the full metrics (discs: median L2, then FNR + FPR; segmentation: Dice) and keep the better."""
    scores = {}
    for which in ("best", "last"):
        from napari_medseg.engine.config import read_config

        discs = read_config(run / which)["model"].get("task") == "keypoints"
        # discs: on the scans and their field-of-view crops; silent level shifts first, then scans a level off
        m = api.evaluate(str(data), weights=str(run / which), subset="val", device="cpu", precision="fp32",
                         fov_crops=discs)["mean"]
        scores[which] = (m["silent_shifts"], m["off_by_levels"], m["fnr"] + m["fpr"], m["l2_mm"]) if discs \
            else (-m["dice"],)
        print(which, "on val:", m, flush=True)
    return min(scores, key=scores.get)


MAX_BUNDLE_BYTES = 5 * 1024 * 1024  # weights ship inside the package: keep each file small


def store_weights(src: Path, dst: Path) -> str:
    """Copy the weights; above MAX_BUNDLE_BYTES store floating tensors as float16 (the loader casts them
    back into the float32 network). Returns the stored dtype."""
    if src.stat().st_size <= MAX_BUNDLE_BYTES:
        shutil.copy(src, dst)
        dst.chmod(0o644)
        return "float32"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src))
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}, str(dst))
    dst.chmod(0o644)
    return "float16"


def _describe(cfg: dict) -> str:
    """The card's line on what the model expects (and, for disc labeling, the levels it names)."""
    from napari_medseg.engine.expectations import describe
    from napari_medseg.io import disc_name

    text = describe(cfg.get("expects") or {})
    numbers = cfg.get("preprocessing", {}).get("disc_numbers")
    if numbers:
        text += f"; names discs {disc_name(min(numbers))} to {disc_name(max(numbers))} only (its training levels)"
    return text


def write_expects(recipe: dict, data: Path) -> int:
    """For weights bundled before input checks existed: record ``expects`` from the training split of the
    recipe's dataset, exactly as training records it now (engine.expectations)."""
    from napari_medseg import io
    from napari_medseg.engine import data as D
    from napari_medseg.engine import preprocess as pp
    from napari_medseg.engine.expectations import input_profile, summarise

    target = ROOT / "napari_medseg" / "weights" / recipe["name"] / "config.json"
    cfg = json.loads(target.read_text())
    layout = D.discover(data)
    stems = D.split(layout, seed=int(cfg.get("training", {}).get("seed", 0) or 0))["train"]
    for extra_name in recipe.get("extra_train", []):
        other = D.discover(data.parent / extra_name)
        stems += [(other, s) for s in D.split(other)["train"]]
    profiles = []
    for item in stems:
        lay, stem = item if isinstance(item, tuple) else (layout, item)
        vol = io.read(lay.pairs[stem][0])[0]
        axis = None
        if lay.kind == "seg3d":
            axis = pp.slice_axis_for(vol.affine, vol.data.shape, cfg["preprocessing"].get("slice_axis", "auto"))
        elif lay.kind == "discs":
            axis = pp.sagittal_axes(vol.affine)[0]
        profiles.append(input_profile(vol, axis))
    cfg["expects"] = summarise(profiles)
    cfg.setdefault("card", {})["expects"] = _describe(cfg)
    target.write_text(json.dumps(cfg, indent=2) + "\n")
    print(recipe["name"], cfg["card"]["expects"])
    return 0


def main() -> int:
    recipe_path, action = Path(sys.argv[1]), sys.argv[2]
    extra = sys.argv[3:]
    recipe = json.loads(recipe_path.read_text())
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data")) / recipe["dataset"]
    run = Path(os.environ.get("NAPARI_MEDSEG_RUNS", ROOT / "runs")) / recipe["name"]
    seed = None
    if "--seed" in extra:  # a repeat with another seed has its own run folder
        seed = extra[extra.index("--seed") + 1]
        if seed != recipe["train"][recipe["train"].index("--seed") + 1]:
            run = run.with_name(f"{recipe['name']}-seed{seed}")
        else:
            seed = None
    if action == "train":
        more = [a for d in recipe.get("extra_train", []) for a in ("--extra-train", str(data.parent / d))]
        cmd = [sys.executable, "-m", "napari_medseg.cli", "train", "--data", str(data), "--out", str(run),
               *recipe["train"], *more, *extra]
        return subprocess.call(cmd)
    if action == "expects":
        return write_expects(recipe, data)
    if action != "bundle":
        raise SystemExit("action must be train, bundle or expects")
    from napari_medseg import api
    from napari_medseg.engine import checkpoint as ckpt
    from napari_medseg.engine import tasks
    from napari_medseg.io import disc_name

    name = extra[extra.index("--as") + 1] if "--as" in extra else recipe["name"]
    picked = [a for a in extra if a in ("best", "last")]
    which = picked[0] if picked else choose_on_val(api, data, run)
    history = json.loads((run / "history.json").read_text())
    cfg = ckpt.read_config(run / which)
    target = ROOT / "napari_medseg" / "weights" / name
    train_args = list(recipe["train"])
    if seed is not None:
        train_args[train_args.index("--seed") + 1] = seed
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    stored = store_weights(run / which / "model.safetensors", target / "model.safetensors")
    (target / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    # the test metrics are those of the weights as shipped
    result = api.evaluate(str(data), weights=str(target), subset="test", device="cpu", precision="fp32")
    fov = None
    if cfg["model"].get("task") == "keypoints":  # the test scans cropped as other protocols show them too
        fov = api.evaluate(str(data), weights=str(target), subset="test", device="cpu", precision="fp32",
                           fov_crops=True)["mean"]["per_crop"]
    cfg["card"] = {
        "name": name, "about": recipe["about"] + "".join(
            [f" Recipe {recipe['name']}." if name != recipe["name"] else "",
             f" Bundled from its run with --seed {seed}." if seed is not None else ""]),
        "dataset": recipe["dataset"], "split": "split.json of the dataset (train / val / test stems)",
        "extra_train": [f"{d} (its train split)" for d in recipe.get("extra_train", [])], "recipe": train_args,
        "loss": cfg["training"].get("loss_used", cfg["training"].get("loss")),
        "augmentation": tasks.of(cfg["model"].get("task", "segmentation")).augmentation_text(
            cfg["training"], cfg.get("preprocessing", {})),
        "level_balancing": cfg["training"].get("repeats"),
        "training_precision": cfg["training"].get("precision"), "optimizer": cfg["training"].get("optimizer"),
        "learning_rate": cfg["training"].get("lr"), "schedule": cfg["training"].get("schedule"),
        "batch_size": cfg["training"].get("batch_size"), "input_size": cfg["training"].get("input_size"),
        "epochs_trained": len(history), "checkpoint": which, "checkpoint_epoch": cfg.get("epoch"),
        "train_wall_s": round(sum(h["seconds"] for h in history), 1),
        "hardware": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {cfg['software']['torch']}",
        "test_metrics": result["mean"], "test_precision": result["precision"], "weights_stored_as": stored,
        **({"test_metrics_fov_crops": fov} if fov else {}),
        "licence": recipe["licence"],
        "expects": _describe(cfg),
        **({"accepts": recipe["accepts"]} if recipe.get("accepts") else {}),
        **({"names": [disc_name(n) for n in cfg["preprocessing"]["disc_numbers"]]}
           if cfg["preprocessing"].get("disc_numbers") else {}),
        "reproduce": f"NAPARI_MEDSEG_DATA_DIR=../shared/data napari-medseg evaluate --model {name} "
                     f"--data ../shared/data/{recipe['dataset']}",
    }
    if recipe.get("label_names"):  # class names for the Labels layer's features (2-D datasets carry none)
        cfg["preprocessing"]["label_names"] = recipe["label_names"]
    cfg["training"]["out"] = f"runs/{run.name}"
    cfg["training"]["data"] = recipe["dataset"]  # no path of the training machine in the package
    cfg["data"]["root"] = recipe["dataset"]
    (target / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    print(json.dumps(cfg["card"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
