"""The main job on the shipped sample data: open it in napari, or headless write a screenshot + summary.

Headless (no display): napari still renders, on a virtual X server started through Xvfb when one is
installed; the loaded volumes' summary is written either way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SAMPLE_KEYS = ("ct_dicom", "mr_spine", "endoscopy")


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
        subprocess.run(cmd, check=True)
        return json.loads((out / "summary.json").read_text())
    return _open_in_napari(out, headless)


def _open_in_napari(out: Path, headless: bool) -> dict:
    """One window with every sample (CT shown first); headless: one hidden viewer per sample."""
    import napari

    summary: dict = {"samples": {}}
    if not headless:
        viewer = napari.Viewer(title="napari-medseg demo")
        for key in SAMPLE_KEYS:
            summary["samples"][key] = _add_sample(viewer, key)
        _focus(viewer, SAMPLE_KEYS[0])
        napari.run()
        return summary
    out.mkdir(parents=True, exist_ok=True)
    shots = {}
    for key in SAMPLE_KEYS:
        viewer = napari.Viewer(show=False, title=f"napari-medseg demo: {key}")
        summary["samples"][key] = _add_sample(viewer, key)
        _focus(viewer, key)
        path = out / f"screenshot_{key}.png"
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        shots[key] = str(path)
        viewer.close()
    summary["screenshots"] = shots
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {len(shots)} screenshots and summary.json to {out}")
    return summary


def _add_sample(viewer, key: str) -> list[dict]:
    import numpy as np

    from ._napari import _sample_data as samples

    loaders = {"ct_dicom": samples.ct_dicom_series, "mr_spine": samples.mr_spine_discs,
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
    if key == "mr_spine" and viewer.dims.ndim == 3:
        viewer.dims.order = (2, 0, 1)  # sagittal: superior-inferior vertical, anterior-posterior horizontal
    if viewer.dims.ndisplay == 2 and key != "endoscopy":
        # radiological convention: anterior up, patient's right on the screen's left
        viewer.camera.orientation2d = ("up", "left")
    viewer.reset_view()
