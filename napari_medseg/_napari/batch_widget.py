"""Batch: run a network over a folder; progress per file, a results table, skipped files with their error."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Table
from napari.qt.threading import thread_worker

from ._common import Failed, RunControls, WeightsPicker, force_checkbox, guarded, notify_error


class BatchWidget(Container):
    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.task = ComboBox(label="task", choices=["segmentation", "keypoints"], value="segmentation")
        self.inputs = FileEdit(label="input folder", mode="d")
        self.out = FileEdit(label="output folder", mode="d")
        self.weights = WeightsPicker("segmentation")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.force = force_checkbox()
        self.resume = CheckBox(text="resume: skip inputs manifest.csv in the output folder records as done",
                               value=False)
        self.controls = RunControls("Run batch")
        self.table = Table(value={"file": [], "status": [], "time (s)": [], "result": []})
        super().__init__(widgets=[self.task, self.inputs, self.out, self.weights, self.device, self.force, self.resume, self.controls,
                                  self.table])
        self.task.changed.connect(self._task_changed)
        self.controls.run_button.changed.connect(self.run)
        self.worker = None
        self.summary = None

    def _task_changed(self, *_):
        self.weights.task = self.task.value
        self.weights.refresh()

    def run(self, *_):
        try:
            source = self.weights.resolve()
            inputs, out = str(self.inputs.value), str(self.out.value)
            if inputs in ("", ".") or out in ("", "."):
                raise ValueError("choose an input folder and an output folder")
        except ValueError as err:
            notify_error(err)
            return
        self.controls.busy(True, "running...")
        self.table.value = {"file": [], "status": [], "time (s)": [], "result": []}
        token, task, device, force = self.controls.token, self.task.value, self.device.value, self.force.value
        resume = self.resume.value

        @thread_worker
        @guarded
        def work():
            from .. import api

            return api.batch(inputs, out, task=task, device=device, callback=self.controls.report, cancel=token,
                             force=force, resume=resume, **source)

        worker = work()
        worker.returned.connect(self._done)
        worker.errored.connect(lambda err: setattr(self.controls.status, "value", notify_error(err)))
        worker.finished.connect(lambda: self.controls.busy(False))
        self.worker = worker
        worker.start()

    def _done(self, summary):
        if isinstance(summary, Failed):
            self.controls.status.value = notify_error(summary.error)
            return
        self.summary = summary
        rows = {"file": [], "status": [], "time (s)": [], "result": []}
        for r in summary["results"]:
            rows["file"].append(r["file"])
            if r.get("resumed"):
                rows["status"].append("done before")
                rows["time (s)"].append("")
                rows["result"].append(", ".join(Path(p).name for p in r["outputs"]))
                continue
            rows["status"].append("ok" if r.get("verdict", "ok") == "ok" else "check")
            seconds = r.get("seconds")
            rows["time (s)"].append(f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "")
            if "discs" in r:
                rows["result"].append(f"{r['discs']} discs: {', '.join(r['names'])}" +
                                      ("" if r.get("verdict", "ok") == "ok" else f" | {r['verdict']}"))
            else:
                rows["result"].append(", ".join(f"{k}={v:.0f}" for k, v in r["volumes"].items()))
        for s in summary["skipped"]:
            rows["file"].append(s["file"])
            rows["status"].append("skipped")
            rows["time (s)"].append("")
            rows["result"].append(s["error"])
        self.table.value = rows
        self.controls.status.value = (f"{len(summary['results'])} done, {len(summary['skipped'])} skipped; "
                                      f"outputs in {self.out.value}")
