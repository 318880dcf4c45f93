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
# what each picture shows, in the caption's title
SAMPLE_TITLES = {
    "skin": "Dermoscopy image (ISIC 2016 test set, CC-0; shipped in the package)",
    "ct_dicom": "Abdominal CT, 20-slice DICOM series (TotalSegmentator test data, Apache-2.0), middle slice",
    "mr_lumbar": "Sagittal lumbar MRI (multi-site disc set, test scan spine_vb1_16), a 12 mm slab around the middle slice",
    "endoscopy": "Colonoscopy image (Kvasir-SEG test split)",
    "mr_cardiac": "Short-axis cardiac cine MRI (ACDC test case, end-diastole), middle slice",
}
REFERENCE = (0.0, 1.0, 0.0)  # lime: the sample's own labels / points, drawn as outlines / rings


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
    from ._figure import compose

    shots = {}
    for key in SAMPLE_KEYS:
        viewer = napari.Viewer(title=f"napari-medseg demo: {key}")  # shown (on Xvfb): a hidden canvas screenshots black
        caption = _sample_and_model(viewer, key, out, summary)
        if caption is None:
            viewer.close()
            continue
        _focus(viewer, key)
        _overlay(viewer).visible = False  # the caption goes below the picture, not over it
        path = out / f"screenshot_{key}.png"
        compose(viewer.screenshot(canvas_only=True, flash=False), caption, path)
        shots[key] = str(path)
        summary.setdefault("captions", {})[key] = {"title": caption.title, "lines": caption.lines,
                                                  "legend": [sw.label for sw in caption.legend]}
        viewer.close()
    summary["screenshots"] = shots
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {len(shots)} screenshots, {len(summary['results'])} model results and summary.json to {out}")
    for key, why in summary["skipped"].items():
        print(f"skipped {key}: {why}")
    return summary


def _sample_and_model(viewer, key: str, out: Path, summary: dict):
    """Add one sample and run its bundled model; returns the picture's caption, or None (with the reason in
    the summary) when the sample cannot be had."""
    from ..io.errors import USER_ERRORS
    from ._figure import Caption

    try:
        summary["samples"][key] = _add_sample(viewer, key)
    except USER_ERRORS as err:
        summary["skipped"][key] = str(err)
        return None
    model = best_bundled(SAMPLE_DATASET.get(key))
    caption = Caption(SAMPLE_TITLES.get(key, key))
    if model is None:
        caption.lines.append("No model ran: none of the bundled models is trained on this kind of image "
                             "(shown to check that the reader keeps its geometry).")
        return caption
    summary["results"][key], more = _run_model(viewer, key, model, out)
    caption.title += f": {model}"
    caption.lines += more.lines
    caption.legend += more.legend
    return caption


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


def _run_model(viewer, key: str, model: str, out: Path):
    """Run a bundled model on the sample's image layer; add the result as a layer and save it. Returns the
    summary entry and a :class:`Caption` with the lines and legend for what was drawn."""
    from napari.layers import Image

    from .. import api
    from ..engine.checkpoint import read_config
    from ._figure import Caption, Swatch

    image = next(lyr for lyr in viewer.layers if lyr.name.startswith(f"{key}:") and isinstance(lyr, Image))
    from ..engine import tasks

    if tasks.of(read_config(api.bundled_weights()[model])["model"].get("task")) is tasks.KEYPOINTS:
        return _run_disc_model(viewer, key, model, image, out)
    from ._layers import labels_layer_data

    seg = api.segment(image, model=model)
    data, kwargs, _ = labels_layer_data(seg.labels, image, seg.class_names, f"{key}: {model}")
    layer = viewer.add_labels(data, **kwargs)
    layer.opacity = 0.55
    if len(seg.class_names) == 2:  # one foreground class: a colour that stands out on tissue
        from napari.utils.colormaps import DirectLabelColormap

        layer.colormap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: "cyan"})
    refs = _outline_references(viewer, key, layer)
    _overlay(viewer).text = f"fill: prediction ({model})\ngreen outline: reference"
    path = out / (f"{key}_seg.png" if image.rgb or data.ndim == 2 else f"{key}_seg.nii.gz")
    layer.save(str(path), plugin="napari-medseg")
    counts = np.bincount(data.ravel(), minlength=len(seg.class_names))
    caption = Caption("", [f"Filled: the model's segmentation ({', '.join(seg.class_names[1:])})."])
    caption.legend = [Swatch(f"{name} (prediction)", tuple(layer.get_color(i)), "fill")
                      for i, name in enumerate(seg.class_names) if i > 0]
    if refs:
        caption.lines.append("Green outline: the sample's own manual reference, for comparison.")
        caption.legend.append(Swatch("reference (" + ", ".join(refs) + ")", REFERENCE, "outline"))
    return ({"model": model, "file": str(path),
             "voxels": {seg.class_names[i]: int(c) for i, c in enumerate(counts) if i > 0}}, caption)


def _run_disc_model(viewer, key: str, model: str, image, out: Path):
    """Label the discs of the sample; the sample's own points become green rings under the prediction."""
    import warnings

    from napari.layers import Points

    from .. import api
    from ..engine.discs import DiscsFlagged
    from ._figure import Caption, Swatch
    from ._layers import points_layer_data

    truths = [lyr for lyr in viewer.layers if isinstance(lyr, Points) and lyr.name.startswith(f"{key}:")]
    for truth in truths:
        truth.text.visible = False  # the sample's own points: unnamed green rings under the prediction
        truth.symbol, truth.size = "ring", 10
        truth.face_color = "lime"
        truth.projection_mode = "all"  # with the thick slice of _focus: points a slice or two off still show
    with warnings.catch_warnings():  # the verdict goes into the summary and the caption; flagged discs show red rings
        warnings.simplefilter("ignore", DiscsFlagged)
        points = api.label_discs(image, model=model)
    data, kwargs, _ = points_layer_data(points, image, f"{key}: {model}")
    layer = viewer.add_points(data, **kwargs)
    layer.projection_mode = "all"
    _overlay(viewer).text = f"named points: prediction ({model})\ngreen rings: reference"
    _legend(viewer)
    path = out / f"{key}_discs.csv"
    layer.save(str(path), plugin="napari-medseg")
    names = list(kwargs["features"]["name"])
    flagged = [d.name for d in points.discs if d.flag]
    caption = Caption("", [f"Dots: the discs the model found, named ({', '.join(names) or 'none'}); "
                           f"colour = confidence (viridis: purple low, yellow high). Verdict: {points.verdict}."])
    legend = [Swatch("predicted disc, high confidence", (0.99, 0.91, 0.14), "dot", edge=(1, 1, 1)),
              Swatch("low confidence", (0.27, 0.0, 0.33), "dot", edge=(1, 1, 1)),
              Swatch("disc name", (1.0, 1.0, 0.0), "text")]
    if flagged:
        caption.lines.append(f"Thick red ring: flagged, check its level ({', '.join(flagged)}).")
    legend.append(Swatch("red ring: flagged disc (none here)" if not flagged else "flagged: check the level",
                         (1.0, 0.1, 0.1), "ring"))
    if truths:
        ref_names = [str(n) for t in truths for n in (t.features["name"] if "name" in t.features else [])]
        missing = [n for n in names if n not in ref_names]
        caption.lines.append("Green ring: the sample's own reference point (" + ", ".join(ref_names) + ")"
                             + (f"; no ring at {', '.join(missing)}: this scan's reference does not label "
                                "that level, so it is not scored." if missing else "."))
        legend.append(Swatch("reference point", REFERENCE, "ring"))
    caption.legend = legend
    return ({"model": model, "file": str(path), "discs": names, "verdict": points.verdict}, caption)


def _outline_references(viewer, key: str, prediction) -> list[str]:
    """The sample's own (reference) Labels layers as green outlines above the filled prediction, so the two
    are told apart at a glance. Returns the reference classes drawn."""
    from napari.layers import Labels
    from napari.utils.colormaps import DirectLabelColormap

    drawn = []
    for ref in [lyr for lyr in viewer.layers if isinstance(lyr, Labels) and lyr is not prediction
                and lyr.name.startswith(f"{key}:")]:
        values = [int(v) for v in np.unique(np.asarray(ref.data)) if v != 0]
        ref.colormap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent",
                                                       **{v: "lime" for v in values}})
        ref.contour = 2
        ref.opacity = 1.0
        viewer.layers.move(viewer.layers.index(ref), len(viewer.layers) - 1)  # drawn on top of the prediction
        classes = list(ref.features["class"]) if "class" in getattr(ref, "features", {}) else []
        drawn += [classes[v] if v < len(classes) else f"label {v}" for v in values]
    _legend(viewer)
    return drawn


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
        # short names the layer list shows whole: the image keeps its file name, its labels or points are
        # the sample's reference
        kwargs["name"] = f"{key}: " + (kwargs.get("name", layer_type) if layer_type == "image" else "reference")
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
    if key in ("mr_spine", "mr_lumbar"):
        from ._layers import show_sagittal

        show_sagittal(viewer)
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9 renamed it
    camera.zoom *= 0.85  # a margin, so that the names of the top and bottom discs are not cut off
