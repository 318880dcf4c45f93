"""Train: on the open image + labels layers or on a dataset folder, in a separate process, with a live
progress bar, loss/metric plot, prediction preview, Cancel (keeps a resumable checkpoint) and Resume."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Select, SpinBox
from napari.layers import Image, Labels
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QWidget

from ..io.errors import InvalidInput
from ..engine import tasks
from .. import io, models
from ..engine.choices import DEVICES
from ._common import NO_WEIGHTS, RunControls, WeightsPicker, notify_error, register_checkpoint

FOLDER, LAYERS = "dataset folder", "open layers"


class CurvePlot(QWidget):
    """Training loss and validation metric per epoch, drawn with QPainter (no plotting dependency)."""

    def __init__(self):
        super().__init__()
        self.setMinimumHeight(140)
        self.loss: list[float] = []
        self.metric: list[float] = []
        self.metric_name = "val"

    def add(self, loss: float, metric: float | None, name: str):
        self.loss.append(loss)
        if metric is not None:
            self.metric.append(metric)
        self.metric_name = name
        self.update()

    def clear(self):
        self.loss, self.metric = [], []
        self.update()

    def paintEvent(self, _event):  # noqa: N802 (Qt name)
        p = QPainter(self)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(30, 30, 35))
        for series, colour in ((self.loss, QColor(80, 170, 255)), (self.metric, QColor(255, 170, 60))):
            if len(series) < 1:
                continue
            lo, hi = min(series), max(series)
            span = hi - lo if hi > lo else 1.0
            pen = QPen(colour)
            pen.setWidth(2)
            p.setPen(pen)
            n = max(2, len(series))
            pts = [(8 + (w - 16) * i / (n - 1), h - 18 - (h - 30) * (v - lo) / span) for i, v in enumerate(series)]
            for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
                p.drawLine(int(x0), int(y0), int(x1), int(y1))
            for x, y in pts:
                p.drawEllipse(int(x) - 2, int(y) - 2, 4, 4)
        p.setPen(QColor(220, 220, 220))
        last = f"loss {self.loss[-1]:.4f}" if self.loss else "loss -"
        last += f"   {self.metric_name} {self.metric[-1]:.4f}" if self.metric else ""
        p.drawText(8, h - 4, last)
        p.end()


class _Lifecycle(QObject):
    """What must stop when the Train widget goes away: its poll timer and its training process (cancelled,
    then terminated after a grace period; the run keeps its last resumable checkpoint). Watches the widget
    (napari takes a closed dock's widget out of its parent) and its window (the viewer closing)."""

    def __init__(self, timer, widget):
        super().__init__()
        self.timer, self.proc, self.widget = timer, None, widget
        widget.installEventFilter(self)

    def watch_window(self):
        top = self.widget.window()
        if top is not None and top is not self.widget:
            top.installEventFilter(self)

    def eventFilter(self, obj, event):  # noqa: N802 (Qt name)
        kind = event.type()
        if (obj is self.widget and kind == QEvent.Type.ParentChange and self.widget.parent() is None) or \
                (obj is not self.widget and kind == QEvent.Type.Close):
            self.shutdown()
        return False

    def shutdown(self, *_):
        try:
            self.timer.stop()
        except RuntimeError:  # already deleted with the widget
            pass
        proc, self.proc = self.proc, None
        if proc is not None and proc.alive:
            proc.stop(grace_s=5.0)


class TrainWidget(Container):
    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.source = ComboBox(label="train on", choices=[LAYERS, FOLDER], value=LAYERS)
        self.image = ComboBox(label="image", choices=self._images)
        self.labels_layer = ComboBox(label="labels", choices=self._labels)
        # the correct-and-retrain loop: every image corrected so far trains, not only the current one
        self.more = Select(label="also train on", choices=self._labels, allow_multiple=True, value=[])
        self.folder = FileEdit(label="dataset folder", mode="d", visible=False)
        # segmentation networks first, then the disc labeler(s)
        self.network = ComboBox(label="network", choices=sorted(models.REGISTRY, key=lambda n: (
            tasks.of(models.REGISTRY[n]) is not tasks.SEGMENTATION, list(models.REGISTRY).index(n))), value="unet")
        self.size = ComboBox(label="size", choices=["small", "paper"], value="small")
        # fine-tuning: start from bundled weights or a checkpoint (this session's or a folder) of the same network
        self.start_from = WeightsPicker("segmentation", label="start from", none_choice=NO_WEIGHTS)
        self.freeze = CheckBox(text="freeze the encoder (fine-tuning)", value=False)
        self.epochs = SpinBox(label="epochs", min=1, max=1000, value=20)
        self.batch = SpinBox(label="batch size", min=1, max=256, value=4)
        self.lr = FloatSpinBox(label="learning rate (0 = recipe)", min=0.0, max=1.0, step=1e-4, value=0.0)
        self.input_size = SpinBox(label="input size", min=64, max=1024, step=16, value=128)
        self.val_fraction = FloatSpinBox(label="validation fraction", min=0.05, max=0.5, step=0.05, value=0.2)
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.out = FileEdit(label="output folder", mode="d",
                            value=str(Path.home() / "napari-medseg-runs" / time.strftime("run-%Y%m%d-%H%M%S")))
        self.resume = CheckBox(text="resume the run in the output folder", value=False)
        self.overwrite = CheckBox(text="replace the run in the output folder", value=False)
        self.controls = RunControls("Train")
        super().__init__(widgets=[self.source, self.image, self.labels_layer, self.more, self.folder, self.network, self.size,
                                  self.start_from, self.freeze, self.epochs, self.batch, self.lr, self.input_size, self.val_fraction, self.device,
                                  self.out, self.resume, self.overwrite, self.controls])
        self.plot = CurvePlot()
        self.native.layout().addWidget(self.plot)
        self.source.changed.connect(self._source_changed)
        self.controls.run_button.changed.connect(self.run)
        self.controls.cancel_button.changed.connect(self._cancel)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self.network.changed.connect(self._network_changed)
        self.proc = None
        self.result = None
        self.events: list[dict] = []
        self.preview_layer = None
        self._preview = None
        self._timer = QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._poll)
        # closing the dock or the viewer must not leave a training process behind (nor a timer polling a
        # deleted widget): a plain holder, not the widget, is what the destroyed signal reaches
        self._lifecycle = _Lifecycle(self._timer, self.native)
        self.native.destroyed.connect(self._lifecycle.shutdown)

    def _images(self, _w=None):
        return [lyr.name for lyr in self.viewer.layers if isinstance(lyr, Image)]

    def _labels(self, _w=None):
        return [lyr.name for lyr in self.viewer.layers if isinstance(lyr, Labels)]

    def _refresh(self, *_):
        self.image.reset_choices()
        self.labels_layer.reset_choices()
        self.more.reset_choices()

    def image_of(self, labels) -> Image:
        """The Image layer a Labels layer was drawn on: same spatial shape and world placement, and (if
        several qualify) the one whose name starts its name (Segment names its result '<image>_seg')."""
        def spatial(layer):
            shape = np.shape(layer.data)
            return shape[:-1] if isinstance(layer, Image) and layer.rgb else shape

        def placed(layer):
            from ..geometry import world_matrix_of

            return world_matrix_of(layer, len(spatial(layer)))

        fits = [lyr for lyr in self.viewer.layers if isinstance(lyr, Image) and spatial(lyr) == spatial(labels)
                and io.same_placement(placed(lyr), placed(labels))]
        named = [lyr for lyr in fits if labels.name.startswith(lyr.name)]
        longest = max((len(lyr.name) for lyr in named), default=0)
        named = [lyr for lyr in named if len(lyr.name) == longest]  # 'scan_01' over 'scan_0' for 'scan_01_seg'
        pick = named if len(named) == 1 else fits
        if len(pick) != 1:
            raise InvalidInput(f"cannot tell which image the labels layer {labels.name!r} was drawn on "
                             f"({len(pick)} candidates): name it '<image name>_...'")
        return pick[0]

    def _network_changed(self, *_):
        self.start_from.task = models.REGISTRY[self.network.value].task
        self.start_from.refresh()

    def _source_changed(self, *_):
        layers = self.source.value == LAYERS
        self.image.visible = self.labels_layer.visible = self.more.visible = self.val_fraction.visible = layers
        self.folder.visible = not layers

    def _layer_data(self):
        """(train, val, summary) from the open layers through api.training_data_from_layers (the same
        geometry and preprocessing as a dataset folder, Segment and the CLI); the slice through the
        viewer's current point is validation sample 0, so the preview shows the model's prediction on it."""
        from .. import api

        img_layer, lab_layer = self.viewer.layers[self.image.value], self.viewer.layers[self.labels_layer.value]
        at = tuple(float(v) for v in self.viewer.dims.point)
        extra = [self.viewer.layers[name] for name in (self.more.value or []) if name != lab_layer.name]
        more = [(self.image_of(lyr), lyr) for lyr in extra]
        train, val, summary = api.training_data_from_layers(
            img_layer, lab_layer, input_size=int(self.input_size.value), val_fraction=float(self.val_fraction.value),
            at=at, model=self.network.value, more=more)
        self._preview = (api.as_volume(img_layer), summary.get("slice_axis"), summary.get("preview_slice"))
        return train, val, summary

    def run(self, *_):
        from .. import api

        try:
            out = str(self.out.value)
            options = dict(size=self.size.value, epochs=int(self.epochs.value), batch_size=int(self.batch.value),
                           lr=float(self.lr.value) or None, device=self.device.value, resume=bool(self.resume.value),
                           overwrite=bool(self.overwrite.value),
                           input_size=int(self.input_size.value), preview_every=1)
            start = self.start_from.resolve()  # {} (scratch), {"model": name} or {"weights": path}
            init = start.get("model") or start.get("weights")
            if init:
                options["init"] = init
                options["freeze"] = "encoder" if self.freeze.value else None
            elif self.freeze.value:
                raise InvalidInput("freezing the encoder needs weights to start from")
            data, folder = None, None
            if self.source.value == FOLDER:
                if str(self.folder.value) in ("", "."):
                    raise InvalidInput("choose a dataset folder")
                folder = str(self.folder.value)
            else:
                task = tasks.of(models.REGISTRY[self.network.value])
                if not task.trains_on_layers:
                    raise InvalidInput(f"{task.title} trains on a dataset folder: {task.needs}")
                data = self._layer_data()
        except (KeyError, InvalidInput) as err:
            notify_error(err if isinstance(err, InvalidInput) else InvalidInput("choose an image and a labels layer"))
            return
        self.plot.clear()
        self.events, self.result = [], None
        self.controls.busy(True, "starting the training process...")
        self._t0 = time.perf_counter()
        self.proc = api.train_in_background(self.network.value, folder, out, prepared=data, **options)
        self._lifecycle.proc = self.proc
        self._lifecycle.watch_window()
        self._timer.start()

    def _cancel(self, *_):
        if self.proc is not None:
            self.proc.cancel()
            self.controls.status.value = "cancelling: the run stops at the next step and keeps a resumable checkpoint"

    def _poll(self):
        if self.proc is None:
            return
        for ev in self.proc.poll():
            self.events.append({k: v for k, v in ev.items() if k != "preview"})
            self._handle(ev)
        if not self.proc.alive and self.result is None and not any(e["kind"] == "error" for e in self.events):
            for ev in self.proc.poll():
                self._handle(ev)
            if self.result is None:
                self._finish(error=f"the training process ended unexpectedly (exit code {self.proc.process.exitcode})")

    def _handle(self, ev: dict):
        kind = ev["kind"]
        if kind == "note":
            self.controls.status.value = ev["text"]
        elif kind == "started":
            self.controls.status.value = f"training on {ev['device']} ({ev['precision']})"
            self._total = ev["total_epochs"] * ev["steps_per_epoch"]
            self._steps = ev["start_epoch"] * ev["steps_per_epoch"]
        elif kind == "step":
            self._steps += 1
            eta = ev.get("eta_s") or 0
            self.controls.set_progress(self._steps, self._total,
                                       f"epoch {ev['epoch']} step {ev['step']}/{ev['steps_per_epoch']}  "
                                       f"loss {ev['loss']:.4f}  ETA {eta / 60:.1f} min")
        elif kind == "epoch":
            metrics = ev.get("metrics", {})
            name, value = next(iter(metrics.items())) if metrics else ("val", None)
            self.plot.add(ev["train_loss"], value, name)
        elif kind == "preview":
            self._show_preview(ev["preview"])
        elif kind == "result":
            self.result = ev["result"]
            self._finish()
        elif kind == "error":
            self._finish(error=ev["message"])

    def _show_preview(self, preview):
        """The prediction on validation sample 0 (input size) -> a Labels layer on the image, mapped back
        through the same geometry as Segment's results."""
        if preview is None or self.source.value == FOLDER or self._preview is None:
            return
        img_layer = self.viewer.layers[self.image.value] if self.image.value in self.viewer.layers else None
        if img_layer is None:
            return
        from .. import api
        from ._layers import transform_of

        vol, ax, k = self._preview
        full = api.sample_labels_on(preview, vol, ax, k)
        if self.preview_layer is None or self.preview_layer not in self.viewer.layers:
            self.preview_layer = self.viewer.add_labels(full, name="training preview", opacity=0.5,
                                                        **transform_of(img_layer))
        else:
            self.preview_layer.data = full

    def _finish(self, error: str | None = None):
        self._timer.stop()
        self.controls.busy(False)
        if error:
            from napari.utils.notifications import show_error

            show_error(error)
            self.controls.status.value = error
            return
        res = self.result or {}
        ckpt = res.get("best_checkpoint")
        if ckpt and Path(ckpt).is_dir():
            register_checkpoint(f"{Path(str(self.out.value)).name} ({self.network.value}, this session)", ckpt)
        self.controls.status.value = (f"{res.get('reason', 'done')} after epoch {res.get('epochs_done')}: "
                                      f"checkpoint {ckpt}")
