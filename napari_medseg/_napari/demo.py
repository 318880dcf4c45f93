"""The main job on the shipped sample data: open the samples in napari and run the bundled models on
them (named disc points on the lumbar spine MRI, a segmentation of the colonoscopy image and of the cardiac
MRI); the results are written to the output folder (points CSV, labels PNG / NIfTI with the source geometry).

Headless (no display): napari still renders, on a virtual X server started through Xvfb when one is
installed; screenshots and a summary are written either way. A sample that cannot be had (the curated
ones need ``$NAPARI_MEDSEG_DATA_DIR``) is listed as skipped with the reason, and the rest go on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

SAMPLE_KEYS = ("skin", "ct_dicom", "mr_lumbar", "endoscopy", "mr_cardiac")  # "skin" ships inside the package
# the dataset a sample comes from: the bundled model trained on it (best test score) runs on the sample
SAMPLE_DATASET = {"skin": "ph2", "mr_lumbar": "spine-discs", "endoscopy": "kvasir-seg", "mr_cardiac": "acdc"}


def _have_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


def run_demo(out: str | os.PathLike = "out/demo", headless: bool | None = None) -> dict:
    """Open the samples. ``headless=None`` decides from whether a display exists."""
    out = Path(out)
    if headless is None:
        headless = not _have_display()
    if headless and not _have_display():
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            raise SystemExit("no display and no xvfb-run: install Xvfb (apt-get install xvfb) or run with a display")
        cmd = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, "-m", "napari_medseg.cli", "demo",
               "--headless", "--out", str(out)]
        done = subprocess.run(cmd, check=False)
        if not (out / "summary.json").is_file():
            raise SystemExit(done.returncode or 1)
        return json.loads((out / "summary.json").read_text())
    return _open_in_napari(out, headless)


def _open_in_napari(out: Path, headless: bool) -> dict:
    """One window with every sample (CT shown first); headless: one hidden viewer per sample."""
    import napari

    summary: dict = {"samples": {}}
    out.mkdir(parents=True, exist_ok=True)
    summary["results"], summary["skipped"] = {}, {}
    if not headless:
        viewer = napari.Viewer(title="napari-medseg demo")
        for key in SAMPLE_KEYS:
            _sample_and_model(viewer, key, out, summary)
        _focus(viewer, "mr_lumbar" if "mr_lumbar" in summary["samples"] else SAMPLE_KEYS[0])
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        napari.run()
        return summary
    shots = {}
    for key in SAMPLE_KEYS:
        viewer = napari.Viewer(show=False, title=f"napari-medseg demo: {key}")
        if not _sample_and_model(viewer, key, out, summary):
            viewer.close()
            continue
        _focus(viewer, key)
        path = out / f"screenshot_{key}.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        shots[key] = str(path)
        viewer.close()
    summary["screenshots"] = shots
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {len(shots)} screenshots, {len(summary['results'])} model results and summary.json to {out}")
    for key, why in summary["skipped"].items():
        print(f"skipped {key}: {why}")
    return summary


def _sample_and_model(viewer, key: str, out: Path, summary: dict) -> bool:
    """Add one sample and run its bundled model; ``False`` (with the reason in the summary) when the sample
    cannot be had."""
    from ..io.errors import MedSegIOError

    try:
        summary["samples"][key] = _add_sample(viewer, key)
    except (MedSegIOError, OSError) as err:
        summary["skipped"][key] = str(err)
        return False
    model = best_bundled(SAMPLE_DATASET.get(key))
    if model is not None:
        summary["results"][key] = _run_model(viewer, key, model, out)
    return True


def best_bundled(dataset: str | None) -> str | None:
    """The bundled model trained on ``dataset`` with the best test score (Dice; discs: median L2)."""
    from .. import api
    from ..engine.checkpoint import read_config

    best, best_score = None, None
    for name, path in api.bundled_weights().items():
        card = read_config(path).get("card", {})
        if dataset is None or card.get("dataset") != dataset:
            continue
        m = card.get("test_metrics", {})
        score = -m["l2_mm"] if "l2_mm" in m else m.get("dice", 0.0)
        if best_score is None or score > best_score:
            best, best_score = name, score
    return best


def _run_model(viewer, key: str, model: str, out: Path) -> dict:
    """Run a bundled model on the sample's image layer; add the result as a layer and save it."""
    import numpy as np

    from .. import api
    from ._layers import labels_layer_data, points_layer_data
    from ..engine.checkpoint import read_config

    from napari.layers import Image

    image = next(lyr for lyr in viewer.layers if lyr.name.startswith(f"{key}:") and isinstance(lyr, Image))
    task = read_config(api.bundled_weights()[model])["model"].get("task")
    if task == "keypoints":
        from napari.layers import Points

        for truth in (lyr for lyr in viewer.layers if isinstance(lyr, Points) and lyr.name.startswith(f"{key}:")):
            truth.text.visible = False  # the sample's own points: unnamed green rings under the prediction
            truth.symbol, truth.size = "ring", 10
            truth.face_color = "lime"
        import warnings

        from ..engine.discs import DiscsFlagged

        with warnings.catch_warnings():  # the verdict goes into the summary; flagged discs show red rings
            warnings.simplefilter("ignore", DiscsFlagged)
            points = api.label_discs(image, model=model)
        data, kwargs, _ = points_layer_data(points, image, f"{key}: discs ({model})")
        layer = viewer.add_points(data, **kwargs)
        _overlay(viewer).text = f"named points: prediction ({model})\ngreen rings: reference"
        _legend(viewer)
        path = out / f"{key}_discs.csv"
        layer.save(str(path), plugin="napari-medseg")
        return {"model": model, "file": str(path), "discs": list(kwargs["features"]["name"]), "verdict": points.verdict}
    seg = api.segment(image, model=model)
    data, kwargs, _ = labels_layer_data(seg.labels, image, seg.class_names, f"{key}: segmentation ({model})")
    layer = viewer.add_labels(data, **kwargs)
    layer.opacity = 0.55
    if len(seg.class_names) == 2:  # one foreground class: a colour that stands out on tissue
        from napari.utils.colormaps import DirectLabelColormap

        layer.colormap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "cyan"})
    _outline_references(viewer, key, layer)
    _overlay(viewer).text = f"fill: prediction ({model})\ngreen outline: reference"
    path = out / (f"{key}_seg.png" if image.rgb or data.ndim == 2 else f"{key}_seg.nii.gz")
    layer.save(str(path), plugin="napari-medseg")
    counts = np.bincount(data.ravel(), minlength=len(seg.class_names))
    return {"model": model, "file": str(path),
            "voxels": {seg.class_names[i]: int(c) for i, c in enumerate(counts) if i > 0}}


def _outline_references(viewer, key: str, prediction) -> None:
    """The sample's own (reference) Labels layers as green outlines above the filled prediction, so the two
    are told apart at a glance; the viewer's text overlay is the legend."""
    from napari.layers import Labels
    from napari.utils.colormaps import DirectLabelColormap

    for ref in [lyr for lyr in viewer.layers if isinstance(lyr, Labels) and lyr is not prediction
                and lyr.name.startswith(f"{key}:")]:
        values = [int(v) for v in np.unique(np.asarray(ref.data)) if v != 0]
        ref.colormap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent",
                                                       **{v: "lime" for v in values}})
        ref.contour = 2
        ref.opacity = 1.0
        viewer.layers.move(viewer.layers.index(ref), len(viewer.layers) - 1)  # drawn on top of the prediction
    _legend(viewer)


def _overlay(viewer):
    """The canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9, ``viewer.text_overlay`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.overlays.text if canvas is not None and hasattr(canvas, "overlays") else viewer.text_overlay


def _legend(viewer) -> None:
    overlay = _overlay(viewer)
    overlay.visible = True
    overlay.font_size = 12
    overlay.position = "bottom_left"
    overlay.color = "white"


def _add_sample(viewer, key: str) -> list[dict]:
    import numpy as np

    from . import _sample_data as samples

    loaders = {"skin": samples.skin_lesion, "ct_dicom": samples.ct_dicom_series, "mr_spine": samples.mr_spine_discs,
               "mr_lumbar": samples.mr_lumbar_discs, "mr_cardiac": samples.mr_cardiac,
               "endoscopy": samples.endoscopy_polyp}
    entries = []
    for data, kwargs, layer_type in loaders[key]():
        kwargs = dict(kwargs)
        kwargs["name"] = f"{key}: {kwargs.get('name', layer_type)}"
        layer = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        arr = np.asarray(layer.data)
        entries.append({
            "layer": layer.name, "type": layer_type, "shape": list(arr.shape), "dtype": str(arr.dtype),
            "world_extent_mm": np.asarray(layer.extent.world).round(3).tolist(),
            "info": {k: v for k, v in (layer.metadata or {}).get("info", {}).items()
                     if isinstance(v, (str, int, float))},
        })
    return entries


def _focus(viewer, key: str) -> None:
    """Show only one sample's layers and move the sliders to the middle of its volume."""
    import numpy as np

    shown = []
    for layer in viewer.layers:
        layer.visible = layer.name.startswith(f"{key}:")
        if layer.visible:
            shown.append(np.asarray(layer.extent.world))
    if shown:
        lo = np.min([e[0] for e in shown if len(e[0]) == len(shown[0][0])], axis=0)
        hi = np.max([e[1] for e in shown if len(e[1]) == len(shown[0][1])], axis=0)
        nd = viewer.dims.ndim
        centre = list(viewer.dims.point)
        for ax, c in zip(range(nd - len(lo), nd), (lo + hi) / 2):
            centre[ax] = float(c)
        viewer.dims.point = centre
    if key in ("mr_spine", "mr_lumbar") and viewer.dims.ndim == 3:
        viewer.dims.order = (2, 0, 1)  # sagittal, head up and anterior on the left (napari_medseg.geometry)
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9 renamed it
    camera.zoom *= 0.85  # a margin, so that the names of the top and bottom discs are not cut off
