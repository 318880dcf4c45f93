"""Label discs: spine image layer -> editable Points layer (one point per disc, named, with confidence)."""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container, FloatSlider
from napari.layers import Image, Points
from napari.qt.threading import thread_worker

from ..io.errors import USER_ERRORS
from ..engine.choices import DEVICES
from ._common import (
    Failed,
    RunControls,
    WeightsPicker,
    chosen_layer_and_weights,
    force_checkbox,
    guarded,
    notify_error,
)
from ._layers import points_layer_data

NO_PRIOR = "(none)"


class LabelDiscsWidget(Container):
    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.image = ComboBox(label="spine image", choices=self._images)
        self.prior = ComboBox(label="prior points", choices=self._points)
        self.weights = WeightsPicker("keypoints")
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.min_conf = FloatSlider(label="min confidence", min=0.0, max=1.0, step=0.05, value=0.2)
        self.force = force_checkbox()
        self.controls = RunControls("Label discs")
        super().__init__(widgets=[self.image, self.prior, self.weights, self.device, self.min_conf, self.force,
                                  self.controls])
        self.controls.run_button.changed.connect(self.run)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self.worker = None
        self.last_layer = None

    def _images(self, _w=None):
        return [lyr.name for lyr in self.viewer.layers if isinstance(lyr, Image) and not lyr.rgb]

    def _points(self, _w=None):
        return [NO_PRIOR] + [lyr.name for lyr in self.viewer.layers if isinstance(lyr, Points)]

    def _refresh(self, *_):
        self.image.reset_choices()
        self.prior.reset_choices()
        self.weights.refresh()

    def run(self, *_):
        picked = chosen_layer_and_weights(self.viewer, self.image, self.weights, "a spine image layer")
        if picked is None:
            return
        layer, source = picked
        try:  # read in the GUI thread: the user may keep editing the layer while the network runs
            from .. import api

            prior = None if self.prior.value in (None, NO_PRIOR) else api.as_disc_points(self.viewer.layers[self.prior.value])
        except USER_ERRORS as err:
            notify_error(err)
            return
        self.controls.busy(True, "labeling discs...", cancellable=False)  # one forward pass
        min_conf, device, force = float(self.min_conf.value), self.device.value, self.force.value

        @thread_worker
        @guarded
        def work():
            from .. import api

            return api.label_discs(layer, device=device, min_confidence=min_conf, force=force, prior=prior, **source)

        self.worker = self.controls.start(work(), lambda pts: self._done(pts, layer))

    def _done(self, points, layer):
        if isinstance(points, Failed):
            self.controls.status.value = notify_error(points.error)
            return
        data, kwargs, _ = points_layer_data(points, layer, f"{layer.name}_discs")
        self.last_layer = self.viewer.add_points(data, **kwargs)  # empty, it is still a layer to mark discs on
        if not len(data):
            self.controls.status.value = ("no disc found: the model finds the discs it was trained on in scans like its "
                                          "training scans (its card: Plugins > napari-medseg > models); mark them by hand "
                                          f"in '{self.last_layer.name}'")
            return
        self.controls.status.value = (f"{len(data)} disc(s): " + ", ".join(kwargs["features"]["name"]) +
                                      (f" ({points.count})" if points.count else "") +
                                      f" | {points.verdict}" + (" (red rings; name one disc in 'prior points' to "
                                                                "renumber)" if points.verdict != "ok" else ""))
