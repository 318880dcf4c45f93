"""Segment: image layer -> Labels layer with the image's exact world placement, off the GUI thread."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit
from napari.layers import Image
from napari.qt.threading import thread_worker

from ..engine.choices import DEVICES, RUNTIMES
from ._common import (
    Failed,
    RunControls,
    WeightsPicker,
    chosen_layer_and_weights,
    force_checkbox,
    guarded,
    notify_error,
)
from ._layers import TRANSFORM_KEYS, labels_layer_data


class SegmentWidget(Container):
    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=self._image_layers)
        self.weights = WeightsPicker("segmentation")
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.runtime = ComboBox(label="runtime", choices=list(RUNTIMES), value="auto",
                                tooltip="auto: the network's measured choice; onnxruntime: exported once and cached "
                                        "(CPU, fp32); torch: eager")
        self.axis = ComboBox(label="slice axis", choices=["auto", "0", "1", "2"], value="auto")
        self.current_slice = CheckBox(text="current slice only", value=False)
        self.tta = CheckBox(text="test-time flips", value=False)
        self.cleanup = CheckBox(text="keep largest component", value=False)
        self.probs = CheckBox(text="add probability layer", value=False)
        self.force = force_checkbox()
        # a DICOM SEG of the result, referencing the series (only for images read from a DICOM series)
        self.seg_out = FileEdit(label="DICOM SEG to", mode="d", value="", nullable=True,
                                tooltip="folder for <layer>_seg.dcm (DICOM SEG for PACS / OHIF / 3D Slicer); empty: none")
        self.controls = RunControls("Segment")
        super().__init__(widgets=[self.image, self.weights, self.device, self.runtime, self.axis, self.current_slice, self.tta,
                                  self.cleanup, self.probs, self.force, self.seg_out, self.controls])
        self.controls.run_button.changed.connect(self.run)
        self.image.changed.connect(self._propose_model)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self.worker = None
        self.last_layer = None
        self.last_seg_file = None  # the DICOM SEG written with the last result, when "DICOM SEG to" is set

    def _image_layers(self, _w=None):
        return [lyr.name for lyr in self.viewer.layers if isinstance(lyr, Image)]

    def _refresh(self, *_):
        self.image.reset_choices()
        self.weights.refresh()

    def _propose_model(self, *_):
        """The chosen image's models: the first bundled one whose training data it is like, unless the chosen
        weights already fit (or are a checkpoint of the user's); the status line names the ones that fit."""
        from .. import api

        if self.image.value is None or self.image.value not in self.viewer.layers:
            return
        try:
            fits = [n for n, why in api.models_for(self.viewer.layers[self.image.value]).items() if not why]
        except Exception as err:  # noqa: BLE001 - a proposal only: never in the way of choosing by hand
            self.controls.status.value = f"no model proposed ({type(err).__name__}: {err})"
            return
        current = self.weights.choice.value
        if fits and current in api.bundled_weights() and current not in fits:
            self.weights.choice.value = fits[0]
        self.controls.status.value = (f"models for this image: {', '.join(fits)}" if fits else
                                      "no bundled model was trained on images like this one")

    def run(self, *_):
        picked = chosen_layer_and_weights(self.viewer, self.image, self.weights, "an image layer")
        if picked is None:
            return
        layer, source = picked
        axis = None if self.axis.value == "auto" else int(self.axis.value)
        spatial = layer.data.ndim - (1 if layer.rgb else 0)
        # "current slice only": the slice through the viewer's current world point, segmented by the same
        # steps as a full run (api.segment(at=...)), so both agree on that slice
        at = tuple(float(v) for v in self.viewer.dims.point) if self.current_slice.value and spatial >= 3 else None
        # volumes are predicted in batches of slices and can stop between two; a 2-D image is one pass
        self.controls.busy(True, f"segmenting {layer.name}...", cancellable=spatial >= 3)
        token = self.controls.token
        opts = dict(axis=axis, tta=self.tta.value, cleanup=self.cleanup.value, probabilities=self.probs.value,
                    device=self.device.value, runtime=self.runtime.value, force=self.force.value)
        folder = self.seg_out.value
        seg_file = Path(folder) / f"{layer.name}_seg.dcm" if folder and str(folder) not in ("", ".") else None
        # the image's placement, read here on the GUI thread, for the SEG the worker writes
        placed = SimpleNamespace(metadata=dict(layer.metadata or {}),
                                 **{k: getattr(layer, k, None) for k in TRANSFORM_KEYS})

        @thread_worker
        @guarded
        def work():
            from .. import api

            pred = api.load(**source, device=opts["device"], runtime=opts["runtime"])
            seg = api.segment(layer, predictor=pred, axis=opts["axis"], tta=opts["tta"], cleanup=opts["cleanup"],
                              probabilities=opts["probabilities"], callback=self.controls.report, cancel=token, at=at,
                              force=opts["force"])
            return seg, _write_seg(seg, placed, layer.name, seg_file)

        self.worker = self.controls.start(work(), lambda result: self._done(result, layer))

    def _done(self, result, layer):
        if isinstance(result, Failed):
            self._failed(result.error)
            return
        seg, (self.last_seg_file, seg_error) = result
        data, kwargs, _ = labels_layer_data(seg.labels, layer, seg.class_names, f"{layer.name}_seg", seg.model)
        self.last_layer = self.viewer.add_labels(data, **kwargs)
        if seg_error is not None:  # one line in the status; the Labels layer stays
            self.controls.status.value = notify_error(seg_error)
            return
        if seg.probabilities is not None:
            for k in range(1, seg.probabilities.shape[0]):
                meta = {k2: v for k2, v in kwargs.items() if k2 not in ("features", "name")}
                self.viewer.add_image(seg.probabilities[k], name=f"{layer.name}_prob_{seg.class_names[k]}",
                                      colormap="magma", blending="additive", contrast_limits=(0, 1), **meta)
        self.controls.status.value = f"done: {self.last_layer.name}" + (
            f" (DICOM SEG: {self.last_seg_file})" if self.last_seg_file else "")

    def _failed(self, err):
        self.controls.status.value = notify_error(err)


def _write_seg(seg, placed, name: str, target: Path | None) -> tuple[str | None, Exception | None]:
    """On the worker thread: the result as a DICOM SEG at ``target`` (None: not asked for), through the same
    writer as File > Save Layers, from the layer data it will be shown as. Returns (file, error)."""
    if target is None:
        return None, None
    from ._writer import write_labels

    data, kwargs, _ = labels_layer_data(seg.labels, placed, seg.class_names, f"{name}_seg", seg.model)
    try:
        return write_labels(str(target), data, kwargs)[0], None
    except Exception as err:  # noqa: BLE001 - said in the status line by the GUI thread
        return None, err
