"""Training in a separate process (used by the napari Train widget): a crash cannot take the viewer
down, GPU memory is released when it ends, and events stream back through a queue."""

from __future__ import annotations

import multiprocessing as mp
import traceback
from dataclasses import asdict


def _child(opts_dict: dict, data, queue, cancel_event) -> None:
    import torch

    from .events import CancelToken
    from .train import TrainOptions, train

    torch.set_num_threads(max(1, torch.get_num_threads()))

    def send(event):
        d = event.to_dict()
        if event.kind == "preview":
            d["preview"] = event.preview
        queue.put(d)

    try:
        result = train(TrainOptions(**opts_dict), callback=send, cancel=CancelToken(cancel_event), data=data)
        queue.put({"kind": "result", "result": {k: v for k, v in result.items() if k != "history"}})
    except BaseException as err:  # reported to the GUI as a one-line message
        queue.put({"kind": "error", "message": str(err).splitlines()[0] if str(err) else type(err).__name__,
                   "type": type(err).__name__, "traceback": traceback.format_exc()})


class TrainingProcess:
    """Start ``train`` in a spawned process; ``poll()`` returns the events that arrived since the last call."""

    def __init__(self, opts, data=None):
        ctx = mp.get_context("spawn")
        self.queue = ctx.Queue()
        self.cancel_event = ctx.Event()
        self.process = ctx.Process(target=_child, args=(asdict(opts), data, self.queue, self.cancel_event),
                                   daemon=True)

    def start(self):
        self.process.start()
        return self

    def cancel(self):
        self.cancel_event.set()

    def poll(self, limit: int = 1000) -> list[dict]:
        import queue as _q

        out = []
        for _ in range(limit):
            try:
                out.append(self.queue.get_nowait())
            except _q.Empty:
                break
        return out

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def join(self, timeout=None):
        self.process.join(timeout)

    def stop(self, grace_s: float = 5.0) -> int | None:
        """Cancel, give the run ``grace_s`` seconds to stop at its next step (it then keeps a resumable
        checkpoint), then terminate (and at last kill) the process. Returns its exit code."""
        if self.process.pid is None:  # never started
            return None
        if self.process.is_alive():
            self.cancel()
            self.process.join(grace_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(3.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(3.0)
        return self.process.exitcode
