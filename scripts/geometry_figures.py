"""Screenshots for docs/geometry.md: the CT and spine samples opened with the plugin, in the three planes,
with napari's default camera. Writes docs/images/geometry_<sample>.png (axial | coronal | sagittal, with
the patient directions napari_medseg.geometry puts on each screen edge).

    xvfb-run -a .venv/bin/python scripts/geometry_figures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"

# displayed (rows, columns) -> patient directions at (top, bottom, left, right) under the plugin's world
# convention (I, P, L): rows grow downwards, columns to the right
PLANES = {
    "axial": ((0, 1, 2), ("A", "P", "R", "L")),
    "coronal": ((1, 0, 2), ("S", "I", "R", "L")),
    "sagittal": ((2, 0, 1), ("S", "I", "A", "P")),
}


def _label(img: np.ndarray, title: str, edges: tuple[str, str, str, str]) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(img[..., :3])
    d = ImageDraw.Draw(im)
    w, h = im.size
    top, bottom, left, right = edges
    for text, (x, y) in ((top, (w // 2, 8)), (bottom, (w // 2, h - 14)), (left, (8, h // 2)),
                         (right, (w - 18, h // 2)), (title, (8, 8))):
        d.text((x, y), text, fill=(255, 255, 0))
    return np.asarray(im)


def figure(sample: str, name: str) -> Path:
    import napari
    from PIL import Image

    viewer = napari.Viewer(show=True)
    viewer.window.resize(700, 700)
    layers = viewer.open_sample("napari-medseg", sample)
    image = layers[0]
    centre = np.asarray(image.extent.world).mean(axis=0)
    panels = []
    for plane, (order, edges) in PLANES.items():
        viewer.dims.order = order
        viewer.dims.point = tuple(centre)
        viewer.reset_view()
        shot = viewer.screenshot(canvas_only=True, flash=False)
        panels.append(_label(np.asarray(shot), plane, edges))
    viewer.close()
    h = min(p.shape[0] for p in panels)
    row = np.concatenate([p[:h] for p in panels], axis=1)
    path = OUT / f"geometry_{name}.png"
    Image.fromarray(row).save(path)
    return path


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for sample, name in (("ct_abdomen", "ct"), ("mr_spine", "spine")):
        print(figure(sample, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
