"""Figures for docs/results.md: test cases with truth and prediction overlaid, from the bundled models.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python scripts/results_figures.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from napari_medseg import api, io
from napari_medseg.engine import checkpoint as ckpt
from napari_medseg.engine import data as D
from napari_medseg.engine import preprocess as pp

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data"))


def disc_figure(name: str, out: Path, n: int = 7) -> None:
    card = ckpt.read_config(api.bundled_weights()[name])["card"]
    layout = D.discover(DATA / card["dataset"])
    pred_model = api.load(model=name, device="cpu", precision="fp32")
    tiles = []
    for stem in D.split(layout)["test"][:n]:
        img_path, tgt_path = layout.pairs[stem]
        vol = io.read_nifti(img_path)
        view, geo = pp.sagittal_view(vol.data, vol.affine, 7)
        lo, hi = np.percentile(view, [1, 99.5])
        tile = Image.fromarray((np.clip((view - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)).convert("RGB")
        draw = ImageDraw.Draw(tile)
        truth = D.disc_points(tgt_path, vol)
        pred = pred_model.label_discs(vol)
        for (r, c) in pp.voxel_to_view(truth.voxels(), geo):
            draw.ellipse([c - 5, r - 5, c + 5, r + 5], outline=(0, 255, 0), width=2)
        for d, (r, c) in zip(pred.discs, pp.voxel_to_view(pred.voxels(), geo) if len(pred) else []):
            draw.line([c - 4, r - 4, c + 4, r + 4], fill=(255, 40, 40), width=2)
            draw.line([c - 4, r + 4, c + 4, r - 4], fill=(255, 40, 40), width=2)
            draw.text((c + 8, r - 6), d.name, fill=(255, 255, 0))
        draw.text((4, 4), stem, fill=(255, 255, 255))
        tiles.append(tile.resize((256, 256 * tile.height // tile.width)))
    w = sum(t.width for t in tiles)
    h = max(t.height for t in tiles)
    canvas = Image.new("RGB", (w, h))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width
    canvas.save(out)


COLOURS = np.array([[0, 0, 0], [255, 40, 40], [40, 200, 255], [255, 220, 0], [200, 80, 255]], np.float32)


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return image[..., :3].astype(np.float32)
    lo, hi = np.percentile(image, [1, 99.5])
    g = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    return np.repeat(g[..., None], 3, axis=-1).astype(np.float32)


def _overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, label: str, size: int = 256) -> Image.Image:
    """Prediction filled (one colour per class), truth outlined in green."""
    from scipy import ndimage

    rgb = _rgb(image)
    for k in range(1, int(max(pred.max(), truth.max())) + 1):
        m = pred == k
        rgb[m] = 0.55 * rgb[m] + 0.45 * COLOURS[k % len(COLOURS)]
        t = truth == k
        width = max(1, round(max(truth.shape) / size))
        rgb[t & ~ndimage.binary_erosion(t, iterations=width)] = [0, 255, 0]
    tile = Image.fromarray(rgb.astype(np.uint8)).resize((size, size))
    ImageDraw.Draw(tile).text((4, 4), label, fill=(255, 255, 0))
    return tile


def _cases(layout, stems):
    """(image, truth) pairs: 2-D images, or the slice with the most foreground of each test volume."""
    for stem in stems:
        img_path, tgt_path = layout.pairs[stem]
        if layout.kind == "seg2d":
            yield stem, io.read_image2d(img_path), D.read_mask(tgt_path), None
        else:
            vol = io.read_nifti(img_path)
            truth = np.asarray(io.read_nifti(tgt_path).data)
            k = int(np.argmax((truth > 0).sum(axis=(0, 1))))  # ACDC: slices on the last axis
            yield stem, vol, truth, k


def seg_figure(dataset: str, models: dict[str, dict], out: Path, n: int = 5) -> None:
    """Columns: test cases; rows: one per model. ``models``: label -> ``{"model": bundled}`` or
    ``{"weights": run folder}``."""
    layout = D.discover(DATA / dataset)
    stems = D.split(layout)["test"]
    stems = stems[:: max(1, len(stems) // n)][:n]
    preds = {label: api.load(**src, device="cpu", precision="fp32") for label, src in models.items()}
    columns = []
    for stem, image, truth, k in _cases(layout, stems):
        tiles = []
        for label, pred in preds.items():
            if k is None:
                p = pred.segment_image(image.data, rgb=image.rgb)
                tiles.append(_overlay(image.data, p, truth, label))
            else:
                p = pred.segment_volume(image)
                tiles.append(_overlay(image.data[..., k].T, p[..., k].T, truth[..., k].T, f"{label} {stem}"))
        columns.append(tiles)
    canvas = Image.new("RGB", (256 * len(columns), 256 * len(models)))
    for i, tiles in enumerate(columns):
        for j, t in enumerate(tiles):
            canvas.paste(t, (256 * i, 256 * j))
    canvas.save(out)


def _source(name: str) -> dict | None:
    """Bundled weights by name, else the recipe's run folder (best/) when it exists here."""
    if name in api.bundled_weights():
        return {"model": name}
    run = ROOT / "runs" / name / "best"
    return {"weights": str(run)} if (run / "config.json").is_file() else None


if __name__ == "__main__":
    (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
    disc_figure("hourglass-spine-discs", ROOT / "docs" / "images" / "results_discs.png")
    tasks = {"kvasir-seg": ("results_kvasir.png", ["unet-kvasir-192", "bilateral-kvasir", "bcdunet-kvasir", "unet-kvasir"]),
             "ph2": ("results_ph2.png", ["bcdunet-ph2", "unet-ph2"]),
             "acdc": ("results_acdc.png", ["lstmsa-acdc", "unet-acdc", "unet-acdc-300"])}
    for dataset, (png, names) in tasks.items():
        models = {n: src for n in names if (src := _source(n)) is not None}
        if models:
            seg_figure(dataset, models, ROOT / "docs" / "images" / png)
    print("wrote the figures in docs/images")
