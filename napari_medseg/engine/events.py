"""Small typed events the engine reports to a callback: the CLI shows them with tqdm, the GUI with
progress bars and plots. Cancellation is a flag the engine checks between steps."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable


@dataclass
class Event:
    kind: str = "event"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("preview", None)
        return d


@dataclass
class Started(Event):
    kind: str = "started"
    total_epochs: int = 0
    steps_per_epoch: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    start_epoch: int = 0


@dataclass
class Note(Event):
    """A line for the log (e.g. what fine-tuning loaded and what it re-initialised)."""

    kind: str = "note"
    text: str = ""


@dataclass
class Step(Event):
    kind: str = "step"
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    loss: float = 0.0
    eta_s: float | None = None


@dataclass
class Epoch(Event):
    kind: str = "epoch"
    epoch: int = 0
    train_loss: float = 0.0
    metrics: dict = field(default_factory=dict)
    best: bool = False
    eta_s: float | None = None
    seconds: float = 0.0


@dataclass
class Preview(Event):
    kind: str = "preview"
    epoch: int = 0
    preview: Any = None  # numpy array (prediction on a validation image)


@dataclass
class Finished(Event):
    kind: str = "finished"
    reason: str = "done"  # done | early_stop | cancelled
    epoch: int = 0
    best_metric: float | None = None
    checkpoint: str | None = None


@dataclass
class Progress(Event):
    kind: str = "progress"
    done: int = 0
    total: int = 0
    item: str = ""
    status: str = ""


Callback = Callable[[Event], None]


class CancelToken:
    """Set from another thread, a signal handler or (with a ``multiprocessing.Event``) another process;
    the engine stops at the next step."""

    def __init__(self, event=None):
        self._event = event if event is not None else threading.Event()

    def cancel(self):
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
