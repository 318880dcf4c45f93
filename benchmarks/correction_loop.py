"""The correct-and-retrain loop in the viewer, scored: real napari widgets, real training subprocess.

ISIC 2016 crops (dermoscopy from another source than PH2) with the bundled ``unet-ph2``:

1. the Segment widget segments the first ``--rounds`` test images and the remaining (held-out) test images
   with ``unet-ph2``: Dice "before";
2. round r: the Segment widget segments test image r with the current model, its Labels layer is replaced
   by the reference mask (standing in for the user's brush corrections), and the Train widget fine-tunes
   from the current model ("start from") on that image and corrected layer, the widget's defaults except
   ``--epochs`` and input size 128 (``unet-ph2``'s); the new checkpoint becomes the current model; with
   ``--accumulate`` every image corrected so far trains (the widget's "also train on"), not only this one;
3. after each round the Segment widget segments the held-out images again: Dice "after r rounds".

Only the held-out images are scored, never the corrected ones. Needs a display (``xvfb-run -a``):

    NAPARI_MEDSEG_DATA_DIR=../shared/data xvfb-run -a .venv/bin/python benchmarks/correction_loop.py [--rounds 5]

Writes benchmarks/results/correction_loop.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def wait(app, condition, timeout: float):
    t0 = time.time()
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("the widget did not finish in time")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--accumulate", action="store_true",
                    help="each round trains on every image corrected so far (the Train widget's 'also train on')")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "correction_loop.json"))
    args = ap.parse_args()
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_medseg import io
    from napari_medseg._napari._common import CHECKPOINT_CHOICE
    from napari_medseg.engine.metrics import segmentation_metrics

    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data")) / "isic2016-crops"
    test = json.loads((data / "split.json").read_text())["test"]
    corrected, held_out = test[: args.rounds], test[args.rounds:]
    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    _, seg = viewer.window.add_plugin_dock_widget("napari-medseg", "Segment")
    _, trainer = viewer.window.add_plugin_dock_widget("napari-medseg", "Train")
    layers, truths = {}, {}
    for stem in test:
        img = io.read_image2d(data / "images" / f"{stem}.jpg")
        m = io.read_image2d(data / "masks" / f"{stem}.jpg", kind="labels").data
        truths[stem] = ((m if m.ndim == 2 else m[..., 0]) > 127).astype(np.uint8)  # masks stored as JPEG
        layers[stem] = viewer.add_image(img.data, rgb=True, name=stem)

    def use(weights: str):
        if Path(weights).is_dir():
            seg.weights.choice.value = CHECKPOINT_CHOICE
            seg.weights.folder.value = weights
        else:
            seg.weights.choice.value = weights

    def segment(stem: str):
        seg.image.value = stem
        seg.last_layer = None
        seg.controls.run_button.clicked()
        wait(app, lambda: seg.last_layer is not None, 300)
        return seg.last_layer

    def score(weights: str) -> dict:
        use(weights)
        dice = {}
        for stem in held_out:
            layer = segment(stem)
            dice[stem] = segmentation_metrics(np.asarray(layer.data), truths[stem], 2)["dice"][1]
            viewer.layers.remove(layer)
        return {"mean_dice": float(np.mean(list(dice.values()))), "median_dice": float(np.median(list(dice.values()))),
                "per_image": dice}

    t0 = time.time()
    kept = []  # the corrected Labels layers, in the order they were corrected
    current = "unet-ph2"
    rows = [{"round": 0, "model": current, **score(current)}]
    print(f"round 0 ({current}): held-out Dice {rows[-1]['mean_dice']:.3f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for r, stem in enumerate(corrected, start=1):
            use(current)
            layer = segment(stem)
            before = segmentation_metrics(np.asarray(layer.data), truths[stem], 2)["dice"][1]
            layer.data = truths[stem].astype(layer.data.dtype)  # the user's corrections
            layer.name = f"{stem}_corrected"
            kept.append(layer)
            trainer.image.value, trainer.labels_layer.value = stem, layer.name
            trainer.more.value = [lyr.name for lyr in kept[:-1]] if args.accumulate else []
            trainer.network.value = "unet"
            if Path(current).is_dir():
                trainer.start_from.choice.value = CHECKPOINT_CHOICE
                trainer.start_from.folder.value = current
            else:
                trainer.start_from.choice.value = current
            trainer.epochs.value, trainer.input_size.value = args.epochs, 128
            trainer.out.value = str(Path(tmp) / f"round{r}")
            t_train = time.time()
            trainer.controls.run_button.clicked()
            wait(app, lambda: trainer.result is not None or not trainer.controls.cancel_button.enabled, 1800)
            if trainer.result is None:
                raise RuntimeError(trainer.controls.status.value)
            train_s = time.time() - t_train
            current = trainer.result["best_checkpoint"]
            rows.append({"round": r, "corrected": stem, "its_dice_before_correction": before, "train_s": train_s,
                         **score(current)})
            print(f"round {r} (corrected {stem}, its Dice before {before:.3f}, fine-tune {train_s:.0f} s): "
                  f"held-out Dice {rows[-1]['mean_dice']:.3f}", flush=True)
        viewer.close()  # before its checkpoints' folder goes
    result = {"dataset": "isic2016-crops", "start": "unet-ph2", "rounds": args.rounds, "epochs_per_round": args.epochs,
              "accumulate": args.accumulate,
              "held_out": len(held_out), "rows": rows, "wall_s": time.time() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("\n| round | image corrected | its Dice before correction | fine-tune s | held-out mean Dice | median |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['round']} | {row.get('corrected', '-')} | "
              f"{row['its_dice_before_correction']:.3f} | {row['train_s']:.0f} | " if row["round"] else "| 0 | - | - | - | ",
              end="")
        print(f"{row['mean_dice']:.3f} | {row['median_dice']:.3f} |")


if __name__ == "__main__":
    main()
