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


def disc_figure(name: str, out: Path, n: int = 6) -> None:
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


def seg_figure(names: list[str], out: Path, n: int = 5) -> None:
    """Rows: image, truth, one row per model (prediction overlaid in red, truth outline in green)."""
    cfg = ckpt.read_config(api.bundled_weights()[names[0]])
    layout = D.discover(DATA / cfg["card"]["dataset"])
    stems = D.split(layout)["test"][:n]
    preds = {name: api.load(model=name, device="cpu", precision="fp32") for name in names}
    rows = []
    for stem in stems:
        img_path, tgt_path = layout.pairs[stem]
        vol = io.read_image2d(img_path)
        truth = D.read_mask(tgt_path) > 0
        tiles = []
        for name in names:
            pred = preds[name].segment_image(vol.data, rgb=vol.rgb) > 0
            rgb = vol.data[..., :3].astype(np.float32).copy()
            rgb[pred] = 0.55 * rgb[pred] + 0.45 * np.array([255, 0, 0])
            from scipy import ndimage

            edge = truth & ~ndimage.binary_erosion(truth, iterations=3)
            rgb[edge] = [0, 255, 0]
            tile = Image.fromarray(rgb.astype(np.uint8)).resize((256, 256))
            ImageDraw.Draw(tile).text((4, 4), name, fill=(255, 255, 0))
            tiles.append(tile)
        rows.append(tiles)
    canvas = Image.new("RGB", (256 * len(stems), 256 * len(names)))
    for i, tiles in enumerate(rows):
        for j, t in enumerate(tiles):
            canvas.paste(t, (256 * i, 256 * j))
    canvas.save(out)


if __name__ == "__main__":
    (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
    bundled = api.bundled_weights()
    disc_figure("hourglass-spine-discs", ROOT / "docs" / "images" / "results_discs.png")
    kvasir = [n for n in ("bilateral-kvasir", "unet-kvasir") if n in bundled]
    if kvasir:
        seg_figure(kvasir, ROOT / "docs" / "images" / "results_kvasir.png")
    print("wrote the figures in docs/images")
