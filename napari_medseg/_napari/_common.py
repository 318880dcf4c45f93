"""Pieces the widgets share: weight choices, running engine work off the GUI thread, error display."""

from __future__ import annotations

import traceback
import weakref
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton

from ..io.errors import InvalidInput
from ..engine.events import CancelToken

CHECKPOINT_CHOICE = "checkpoint folder..."
# checkpoints trained in this session (Train widget) become selectable everywhere at once
_SESSION_CHECKPOINTS: dict[str, str] = {}


_PICKERS: "weakref.WeakSet[WeightsPicker]" = weakref.WeakSet()  # every open weights list, to refresh


def register_checkpoint(name: str, path: str) -> None:
    """Make a checkpoint trained in this session selectable in every open widget at once."""
    _SESSION_CHECKPOINTS[name] = path
    for picker in list(_PICKERS):
        try:
            picker.refresh()
        except RuntimeError:  # its Qt widget is gone with a closed dock
            _PICKERS.discard(picker)


def weight_choices(task: str) -> list[str]:
    from .. import api

    names = [n for n, path in api.bundled_weights().items() if _task_of(path, n) == task]
    names += [n for n, p in _SESSION_CHECKPOINTS.items() if _task_of(p, n) == task]
    return names + [CHECKPOINT_CHOICE]


def _task_of(path, name: str) -> str | None:
    """The task of a checkpoint; an unreadable one is left out of the list *with a warning* (shown by
    napari), never silently."""
    import warnings

    from ..engine.checkpoint import read_config
    from ..io.errors import USER_ERRORS

    try:
        return read_config(path)["model"]["task"]
    except (*USER_ERRORS, KeyError, TypeError) as err:  # KeyError, TypeError: a config without model.task
        warnings.warn(f"weights {name!r} ({path}) are unusable and not listed: {err}", stacklevel=2)
        return None


NO_WEIGHTS = "random init (train from scratch)"


class WeightsPicker(Container):
    """Bundled / session weights, or a checkpoint folder (``none_choice``: a first entry for no weights, as
    the Train widget's "start from")."""

    def __init__(self, task: str, label: str = "weights", none_choice: str | None = None):
        self.task = task
        self.none_choice = none_choice
        self.choice = ComboBox(label=label, choices=lambda _w: ([none_choice] if none_choice else []) +
                               weight_choices(self.task))  # follows .task
        self.folder = FileEdit(label="checkpoint", mode="d", visible=True)
        super().__init__(widgets=[self.choice, self.folder], labels=True)
        self.choice.changed.connect(self._sync)
        self._sync()
        _PICKERS.add(self)

    def _sync(self, *_):
        self.folder.visible = self.choice.value == CHECKPOINT_CHOICE

    def refresh(self):
        self.choice.reset_choices()

    def resolve(self) -> dict:
        """``{"model": name}`` for bundled weights or ``{"weights": path}``."""
        from .. import api

        value = self.choice.value
        if self.none_choice is not None and value == self.none_choice:
            return {}
        if value == CHECKPOINT_CHOICE or value is None:
            path = Path(str(self.folder.value))
            if not str(self.folder.value) or str(self.folder.value) == ".":
                raise InvalidInput("choose a checkpoint folder (model.safetensors + config.json)")
            return {"weights": str(path)}
        if value in _SESSION_CHECKPOINTS:
            return {"weights": _SESSION_CHECKPOINTS[value]}
        if value in api.bundled_weights():
            return {"model": value}
        raise InvalidInput(f"unknown weights {value!r}")


def force_checkbox():
    """The explicit override of the input check (engine.expectations): off by default."""
    from magicgui.widgets import CheckBox

    return CheckBox(text="run on any input (skip the check that it is like the training data)", value=False)


class RunControls(Container):
    """Run / Cancel buttons, a progress bar and a status line; the same progress is mirrored into napari's
    activity dock (``napari.utils.progress``) so it is visible when the widget is scrolled away or hidden."""

    def __init__(self, run_text: str = "Run"):
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100, visible=False)
        self.status = Label(value="")
        super().__init__(widgets=[self.run_button, self.cancel_button, self.progress, self.status])
        self.token: CancelToken | None = None
        self.cancel_button.changed.connect(self._cancel)
        self._latest = None  # (done, total, text) written by the worker thread, read by a GUI timer
        self.on_poll = None  # optional callable run by the same timer (GUI thread) while a job runs
        self.activity = None  # napari.utils.progress while a job runs (GUI thread only)
        from qtpy.QtCore import QTimer

        self._timer = QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._poll)

    def report(self, event) -> None:
        """Engine callback (any thread): remember the latest progress; the GUI timer shows it."""
        if getattr(event, "kind", "") == "progress":
            self._latest = (event.done, event.total, f"{event.item}: {event.done}/{event.total} {event.status}")

    def _poll(self):
        if self._latest is not None:
            self.set_progress(*self._latest)
        if self.on_poll is not None:
            self.on_poll()

    def _cancel(self, *_):
        if self.token is not None:
            self.token.cancel()
            self.status.value = "cancelling at the next step..."

    def busy(self, on: bool, text: str = "", cancellable: bool = True):
        """``cancellable=False`` for jobs that cannot stop half-way (one forward pass): Cancel stays disabled
        rather than shown and ignored."""
        self.run_button.enabled = not on
        self.cancel_button.enabled = on and cancellable
        self.progress.visible = on
        if on:
            self.progress.value = 0
            self.token = CancelToken()
            self._latest = None
            self._open_activity(text)
            self._timer.start()
        else:
            self._timer.stop()
            self._close_activity()
        if text:
            self.status.value = text

    def start(self, worker, on_result):
        """Start ``worker`` (a napari ``thread_worker``) under these controls: when it returns, the controls
        are released first (Run enabled, activity entry closed) and then ``on_result`` shows the result; an
        error becomes a one-line notification; ``finished`` releases them in every case. Returns the worker."""

        def returned(result):
            self.busy(False)
            on_result(result)

        worker.returned.connect(returned)
        worker.errored.connect(lambda err: setattr(self.status, "value", notify_error(err)))
        worker.finished.connect(self._finished)
        worker.start()
        return worker

    def _finished(self):
        """A job's end in every case; the dock may have been closed while it ran (its buttons gone)."""
        try:
            self.busy(False)
        except RuntimeError:  # "wrapped C/C++ object ... has been deleted": nothing left to release
            self._timer.stop()

    def _open_activity(self, text: str):
        from napari.utils import progress

        self._close_activity()
        self.activity = progress(total=0, desc=f"napari-medseg: {text or 'working'}")

    def _close_activity(self):
        if self.activity is not None:
            self.activity.close()
            self.activity = None

    def set_progress(self, done: int, total: int, text: str = ""):
        self.progress.max = max(1, total)
        self.progress.value = min(done, total)
        if text:
            self.status.value = text
        a = self.activity
        if a is not None:
            if a.total != total:
                a.total = total
            if done > a.n:
                a.update(min(done, total) - a.n)


def chosen_layer_and_weights(viewer, layer_combo, weights: "WeightsPicker", what: str):
    """The selected layer and weights source, or ``None`` after notifying the user what is missing."""
    try:
        return viewer.layers[layer_combo.value], weights.resolve()
    except InvalidInput as err:
        notify_error(err)
    except KeyError:
        notify_error(InvalidInput(f"choose {what}"))
    return None


class Failed:
    """What a worker returns instead of raising, so expected errors become a one-line notification
    rather than a traceback from the Qt event loop."""

    def __init__(self, error: BaseException):
        self.error = error


def guarded(fn):
    """Run ``fn`` in a worker; any exception comes back as :class:`Failed`. Accelerator memory cached by the
    job is released when it ends."""

    def wrapper(*args, **kwargs):
        from ..engine.devices import release_memory

        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - reported to the user, never swallowed silently
            return Failed(err)
        finally:
            release_memory()

    return wrapper


def notify_error(err: BaseException) -> str:
    """Expected bad input: a napari notification with the engine's one-line message (no traceback dialog)."""
    from napari.utils.notifications import show_error

    from ..io.errors import USER_ERRORS

    expected = (*USER_ERRORS, InterruptedError)
    msg = str(err).splitlines()[0] if str(err) else err.__class__.__name__
    if not isinstance(err, expected):
        msg = f"{err.__class__.__name__}: {msg}"
        traceback.print_exception(err)
    show_error(msg)
    return msg
