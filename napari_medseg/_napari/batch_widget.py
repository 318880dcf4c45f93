"""Batch: run a network over a folder; progress per file and the output folder's ``manifest.csv`` as a live
table (one row per input as it ends: status, seconds, outputs, reason), shown as soon as an output folder
is chosen so that a stopped run can be seen and resumed; at the end each row also gets its result."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Table
from napari.qt.threading import thread_worker

from ..io.errors import InvalidInput
from ..engine.choices import DEVICES
from ._common import Failed, RunControls, WeightsPicker, force_checkbox, guarded, notify_error


class BatchWidget(Container):
    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.task = ComboBox(label="task", choices=["segmentation", "keypoints"], value="segmentation")
        self.inputs = FileEdit(label="input folder", mode="d")
        self.out = FileEdit(label="output folder", mode="d")
        self.weights = WeightsPicker("segmentation")
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.force = force_checkbox()
        self.resume = CheckBox(text="resume: skip inputs manifest.csv in the output folder records as done",
                               value=False)
        self.replace = CheckBox(text="replace: start over in an output folder that holds an earlier run", value=False)
        self.controls = RunControls("Run batch")
        self.table = Table(value=self._rows([]))
        super().__init__(widgets=[self.task, self.inputs, self.out, self.weights, self.device, self.force, self.resume,
                                  self.replace, self.controls,
                                  self.table])
        self.task.changed.connect(self._task_changed)
        self.controls.run_button.changed.connect(self.run)
        self.out.changed.connect(lambda *_: self.show_manifest())
        self.controls.on_poll = self.show_manifest  # while a job runs: the manifest as it grows
        self.worker = None
        self.summary = None
        self._shown = None  # (path, size, mtime) of the manifest the table shows

    COLUMNS = ("file", "status", "time (s)", "outputs", "reason", "result")

    @classmethod
    def _rows(cls, manifest_rows: list[dict], results: dict | None = None) -> dict:
        """Table columns from manifest rows (engine.batch.read_manifest) and, after a run, each input's result."""
        rows = {c: [] for c in cls.COLUMNS}
        for r in manifest_rows:
            rows["file"].append(Path(r["input"]).name)
            rows["status"].append(r.get("status", ""))
            rows["time (s)"].append(r.get("seconds", ""))
            rows["outputs"].append(", ".join(Path(p).name for p in r.get("outputs", "").split(";") if p))
            rows["reason"].append(r.get("reason", ""))
            rows["result"].append((results or {}).get(r["input"], ""))
        return rows

    def show_manifest(self, results: dict | None = None, force: bool = False) -> None:
        """Show the output folder's manifest (latest row per input); cheap when it has not changed."""
        from .. import api

        out = str(self.out.value)
        if out in ("", "."):
            return
        path = Path(out) / "manifest.csv"
        try:
            st = path.stat()
            key = (str(path), st.st_size, st.st_mtime_ns)
        except OSError:
            key = (str(path), None, None)
        if key == self._shown and results is None and not force:
            return
        self._shown = key
        self.table.value = self._rows(api.batch_manifest(out), results)

    def _task_changed(self, *_):
        self.weights.task = self.task.value
        self.weights.refresh()

    def run(self, *_):
        try:
            source = self.weights.resolve()
            inputs, out = str(self.inputs.value), str(self.out.value)
            if inputs in ("", ".") or out in ("", "."):
                raise InvalidInput("choose an input folder and an output folder")
        except InvalidInput as err:
            notify_error(err)
            return
        self.controls.busy(True, "running...")
        self.show_manifest(force=True)
        token, task, device, force = self.controls.token, self.task.value, self.device.value, self.force.value
        resume, replace = self.resume.value, self.replace.value

        @thread_worker
        @guarded
        def work():
            from .. import api

            return api.batch(inputs, out, task=task, device=device, callback=self.controls.report, cancel=token,
                             force=force, resume=resume, overwrite=replace, **source)

        self.worker = self.controls.start(work(), self._done)

    def _done(self, summary):
        if isinstance(summary, Failed):
            self.controls.status.value = notify_error(summary.error)
            return
        self.summary = summary
        results = {}
        for r in summary["results"]:
            if r.get("resumed"):
                results[r["file"]] = "done by an earlier run"
            elif "discs" in r:
                results[r["file"]] = (f"{r['discs']} discs: {', '.join(r['names'])}" +
                                      ("" if r.get("verdict", "ok") == "ok" else f" | {r['verdict']}"))
            else:
                results[r["file"]] = ", ".join(f"{k}={v:.0f}" for k, v in r["volumes"].items())
        self.show_manifest(results)
        self.controls.status.value = (f"{len(summary['results'])} done ({summary.get('resumed', 0)} by an earlier run), "
                                      f"{len(summary['skipped'])} skipped; outputs and manifest.csv in {self.out.value}")
