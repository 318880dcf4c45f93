"""Regenerate the widget screenshots in docs/images from a real napari viewer.

    bash scripts/screenshots.sh        # = xvfb-run -a .venv/bin/python scripts/screenshots.py

Segment, Label discs and Batch use the bundled weights (the best bundled model for the sample's dataset),
opened the way a user does: File > Open Sample, then the widget. Train trains a small U-Net for a few
epochs on the open layers.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.setdefault("NAPARI_MEDSEG_DATA_DIR", str(ROOT.parent / "shared" / "data")))
OUT = ROOT / "docs" / "images"


def wait(app, cond, timeout=600):
    t = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t > timeout:
            raise TimeoutError("widget did not finish")


def main():
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_medseg._napari.demo import best_bundled

    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    kvasir, discs, cardiac = best_bundled("kvasir-seg"), best_bundled("spine-discs"), best_bundled("acdc")

    def use(picker, name):
        picker.refresh()
        picker.choice.value = name

    # Segment
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window.resize(1500, 900)
    image, _ = viewer.open_sample("napari-medseg", "endoscopy")
    _, w = viewer.window.add_plugin_dock_widget("napari-medseg", "Segment")
    w.image.value = image.name
    use(w.weights, kvasir)
    w.controls.run_button.clicked()
    wait(app, lambda: w.last_layer is not None)
    viewer.layers[1].visible = False
    viewer.screenshot(str(OUT / "segment.png"), canvas_only=False)
    viewer.close()

    if cardiac:  # a cardiac MRI volume, segmented slice by slice
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1500, 900)
        image, manual = viewer.open_sample("napari-medseg", "mr_cardiac")
        manual.visible = False
        _, w = viewer.window.add_plugin_dock_widget("napari-medseg", "Segment")
        w.image.value = image.name
        use(w.weights, cardiac)
        w.controls.run_button.clicked()
        wait(app, lambda: w.last_layer is not None)
        viewer.dims.set_current_step(0, image.data.shape[0] // 2)
        viewer.reset_view()
        viewer.screenshot(str(OUT / "segment_cardiac.png"), canvas_only=False)
        viewer.close()

    # Label discs
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 900)
    t2, truth = viewer.open_sample("napari-medseg", "mr_lumbar")
    truth.visible = False
    viewer.dims.order = (2, 0, 1)
    _, w = viewer.window.add_plugin_dock_widget("napari-medseg", "Label discs")
    w.image.value = t2.name
    use(w.weights, discs)
    w.controls.run_button.clicked()
    wait(app, lambda: w.last_layer is not None)
    viewer.dims.set_point(2, float(w.last_layer.data[:, 2].mean()) if len(w.last_layer.data) else 0.0)
    viewer.reset_view()
    viewer.screenshot(str(OUT / "label_discs.png"), canvas_only=False)
    viewer.close()

    # Train
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 1000)
    image, mask = viewer.open_sample("napari-medseg", "endoscopy")
    _, w = viewer.window.add_plugin_dock_widget("napari-medseg", "Train")
    w.image.value, w.labels_layer.value = image.name, mask.name
    w.epochs.value, w.batch.value, w.input_size.value = 6, 1, 128
    w.out.value = str(tmp / "train")
    w.controls.run_button.clicked()
    wait(app, lambda: w.result is not None or not w.controls.cancel_button.enabled)
    viewer.screenshot(str(OUT / "train.png"), canvas_only=False)
    viewer.close()

    # Batch
    inp = tmp / "batch"
    inp.mkdir()
    for p in sorted((DATA / "kvasir-seg" / "images").glob("*.jpg"))[:3]:
        shutil.copy(p, inp / p.name)
    (inp / "corrupt.jpg").write_bytes(b"\xff\xd8\xff broken")
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 900)
    _, w = viewer.window.add_plugin_dock_widget("napari-medseg", "Batch")
    w.inputs.value, w.out.value = str(inp), str(tmp / "batch_out")
    use(w.weights, kvasir)
    w.controls.run_button.clicked()
    wait(app, lambda: w.summary is not None)
    viewer.screenshot(str(OUT / "batch.png"), canvas_only=False)
    viewer.close()
    # DICOM SEG: a segmentation of the CT series written as a SEG, reopened with its series
    dicom_seg_picture(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {sorted(p.name for p in OUT.glob('*.png'))}")
    return 0


def dicom_seg_picture(tmp: Path) -> None:
    """The CT DICOM series with a threshold segmentation (bone: > 200 HU, largest component; a stand-in for
    a model's result, no CT model is bundled) written as a DICOM SEG beside it and the folder reopened: the
    SEG's Labels layer lies on the series."""
    import napari
    import numpy as np

    from napari_medseg import io
    from napari_medseg.engine.infer import largest_components
    from napari_medseg.io.dicom_seg import write_seg

    study = tmp / "study"
    shutil.copytree(DATA / "volumes" / "ct-dicom-series-jpeg2000", study / "series")
    ct = io.read(study / "series")[0]
    bone = largest_components((np.asarray(ct.data) > 200).astype(np.uint8))
    write_seg(study / "bone_seg.dcm", bone, ct, class_names=["background", "bone (threshold)"])
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 900)
    layers = viewer.open(str(study), plugin="napari-medseg")
    viewer.dims.set_current_step(0, layers[0].data.shape[0] // 2)
    viewer.reset_view()
    viewer.screenshot(str(OUT / "dicom_seg.png"), canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    sys.exit(main())
