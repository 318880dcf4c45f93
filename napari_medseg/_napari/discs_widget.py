"""Label discs: spine image layer -> editable Points layer (one point per disc, named, with confidence)."""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container, FloatSlider
from napari.layers import Image, Points
from napari.qt.threading import thread_worker

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
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
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
        prior = None if self.prior.value in (None, NO_PRIOR) else self.viewer.layers[self.prior.value]
        self.controls.busy(True, "labeling discs...", cancellable=False)  # one forward pass
        min_conf, device, force = float(self.min_conf.value), self.device.value, self.force.value

        @thread_worker
        @guarded
        def work():
            from .. import api

            points = api.label_discs(layer, device=device, min_confidence=min_conf, force=force, **source)
            return points

        worker = work()
        worker.returned.connect(lambda pts: self._done(pts, layer, prior))
        worker.errored.connect(lambda err: setattr(self.controls.status, "value", notify_error(err)))
        worker.finished.connect(lambda: self.controls.busy(False))
        self.worker = worker
        worker.start()

    def _done(self, points, layer, prior):
        if isinstance(points, Failed):
            self.controls.status.value = notify_error(points.error)
            return
        data, kwargs, _ = points_layer_data(points, layer, f"{layer.name}_discs")
        if prior is not None and len(prior.data) and len(data):
            data, kwargs = apply_prior(data, kwargs, prior)
        self.last_layer = self.viewer.add_points(data, **kwargs)
        self.controls.status.value = (f"{len(data)} disc(s): " + ", ".join(kwargs["features"]["name"]) +
                                      f" | {points.verdict}" + (" (red rings; name one disc in 'prior points' to "
                                                                "renumber)" if points.verdict != "ok" else ""))


def apply_prior(data, kwargs, prior):
    """``data`` are world coordinates (the new layer has no transform); the prior layer's first point is
    taken to world through its own transform. A user-marked disc anchors the naming: shift every predicted name so that the prediction nearest to
    the marked point takes the marked name (the rest follow in order)."""
    import numpy as np

    from ..io import disc_name, disc_number

    marked = np.asarray(prior.data_to_world(np.asarray(prior.data[0], dtype=float)), dtype=float)  # world, like data
    try:
        marked_number = int(prior.features["sct_number"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        marked_number = disc_number(str(prior.features["name"][0]))
    nearest = int(np.argmin(np.linalg.norm(np.asarray(data) - marked, axis=1)))
    shift = marked_number - int(kwargs["features"]["sct_number"][nearest])
    if shift:
        numbers = [int(n) + shift for n in kwargs["features"]["sct_number"]]
        kwargs["features"]["sct_number"] = np.asarray(numbers)
        kwargs["features"]["name"] = [disc_name(n) for n in numbers]
    data = np.asarray(data, dtype=float).copy()
    data[nearest] = marked  # the user's position wins
    return data, kwargs
