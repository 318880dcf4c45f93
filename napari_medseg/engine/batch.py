"""Batch inference over many files: a manifest written as it goes, resume after a crash or kill, read-ahead
of the next inputs while the network runs, and scale-out over the workers of a Dask cluster.

* ``manifest.csv`` in the output folder gets one row per input (input, outputs, status ok / skipped /
  failed, reason, seconds, model, the input's SHA-256) appended and flushed to disk as each input ends.
  A row is one ``write`` of one line; a line cut by a kill is ignored when the manifest is read back.
  Before any input runs, each input to do gets a ``queued`` row naming the outputs it will write: a kill
  between an output's rename and its ``ok`` row leaves a file the manifest claims, so ``resume`` writes it
  again instead of refusing it as someone else's.
* Every output file is written atomically (temporary file + rename), so a killed run never leaves a half
  file; ``resume`` skips inputs whose manifest row is ``ok`` with the same checksum and whose outputs all
  exist, so a killed run continues where it stopped and ends with the same files as an uninterrupted one.
* Read-ahead: a background thread reads (and checks) the next ``prefetch`` inputs while the network runs
  on the current one; at most ``prefetch`` decoded inputs wait in memory.
* Dask (``dask.distributed``): with a ``client`` (an existing cluster) or ``workers=N`` (a local cluster of
  N processes), each input is one task; a worker loads the model once and keeps it. Failed tasks are
  retried once, then recorded as failed. Outputs are written by the workers into ``out``, which must be a
  folder they can all reach (shared file system on a real cluster).
"""

from __future__ import annotations

import csv
import hashlib
import io as _io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import io
from ..io.errors import USER_ERRORS, InvalidInput, MedSegIOError, NoSpaceLeft, write_error
from . import tasks
from .events import CancelToken, Progress
from .expectations import InputMismatch

MANIFEST = "manifest.csv"
COLUMNS = ("input", "outputs", "status", "reason", "seconds", "model", "sha256")
EXPECTED_ERRORS = USER_ERRORS  # a file that fails with one of these is skipped with the reason


# ---------------------------------------------------------------- the manifest


def checksum(path: Path) -> str:
    """SHA-256 of a file, or of the sorted files of a folder (a DICOM series)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def read_manifest(out: str | os.PathLike) -> list[dict]:
    """The rows of ``out/manifest.csv`` in the order they were written (complete lines only: a line a
    kill cut short is left out); ``[]`` when there is none. A later row of the same input supersedes an
    earlier one (:func:`latest_rows`)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    return [row for row in csv.DictReader(_io.StringIO(complete)) if row.get("input")]


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per input, the latest, in the order inputs first appeared."""
    latest: dict[str, dict] = {}
    for row in rows:
        latest[row["input"]] = row
    return list(latest.values())


class Manifest:
    """``manifest.csv`` of an output folder: read what a previous run finished, append rows as inputs end."""

    def __init__(self, out: Path, model: str):
        self.path = Path(out) / MANIFEST
        self.model = model
        self.previous: dict[str, dict] = {row["input"]: row for row in read_manifest(out)}
        text = self.path.read_text(encoding="utf-8") if self.path.is_file() else ""
        new = not self.path.is_file() or self.path.stat().st_size == 0
        mode = io.atomic.default_mode()  # a plain file: 0666 less the umask, never executable
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
        if not new and not text.endswith("\n"):
            os.write(self._fd, b"\n")  # end the line a kill cut short, so the next row starts clean
        if new:
            self._write(dict(zip(COLUMNS, COLUMNS)))

    def done(self, path: Path, digest: str) -> dict | None:
        """The previous ``ok`` row of this input, when its checksum matches and its outputs all exist."""
        row = self.previous.get(str(path))
        if row is None or row.get("status") != "ok" or row.get("sha256") != digest:
            return None
        outputs = [p for p in row.get("outputs", "").split(";") if p]
        return row if outputs and all(Path(p).is_file() for p in outputs) else None

    def _write(self, row: dict) -> None:
        buf = _io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([row.get(c, "") for c in COLUMNS])
        try:
            os.write(self._fd, buf.getvalue().encode("utf-8"))  # one write per row (O_APPEND)
            os.fsync(self._fd)
        except OSError as err:  # a row cut short is ignored when the manifest is read back
            raise write_error(self.path, err) from err

    def add(self, path: Path, outputs: list[str], status: str, reason: str, seconds: float, digest: str) -> None:
        self._write({"input": str(path), "outputs": ";".join(outputs), "status": status, "reason": reason,
                     "seconds": f"{seconds:.3f}", "model": self.model, "sha256": digest})

    def close(self) -> None:
        os.close(self._fd)


def remove_stale_temporaries(out: Path) -> int:
    """Temporary files a killed run left beside its outputs (``io.atomic`` names them ``.<stem>.XXXX<suffix>``;
    they never replace an output, but they are clutter): removed before resuming."""
    n = 0
    for p in Path(out).iterdir():
        if p.is_file() and p.name.startswith(".") and any(k in p.name for k in ("_seg.", "_discs.", "_labels-disc.")):
            p.unlink()
            n += 1
    return n


# ---------------------------------------------------------------- one input


def read_input(path: Path) -> io.Volume:
    vols = io.read(path)
    if len(vols) != 1:
        raise MedSegIOError(path, f"holds {len(vols)} series; give one series per folder")
    return vols[0]


def stem_of(path: Path) -> str:
    return io.file_stem(path) if path.is_file() else path.name


def check_output_folder(out: Path, files: list[Path], task: str, fmt: str | None = None, *, resume: bool = False,
                        overwrite: bool = False) -> None:
    """Refuse, before any model loads, an output folder whose use would lose something: a file where the
    folder should be; a folder holding an earlier run's results (a manifest with finished inputs) without
    ``resume`` or ``overwrite``; files that this run would write over without ``overwrite``, whether or not
    the folder has a manifest (the user's own ``a_seg.png``). A manifest whose inputs all failed or were
    refused holds nothing to lose and does not block the next run."""
    out = Path(out)
    if resume and overwrite:
        raise InvalidInput("choose resume or overwrite, not both")
    if out.exists() and not out.is_dir():
        raise MedSegIOError(out, "exists and is not a folder: --out names the folder the results are written to")
    if not out.is_dir() or overwrite:
        return
    finished = [r for r in latest_rows(read_manifest(out)) if r.get("status") == "ok"]
    if finished and not resume:
        raise MedSegIOError(out / MANIFEST, f"this folder already holds the results of an earlier run "
                                            f"({len(finished)} input(s)): continue it (--resume) or "
                                            "replace it (--overwrite), or choose another folder")
    started = [r for r in latest_rows(read_manifest(out)) if r.get("status") == "queued"
               and any(Path(p).is_file() for p in r.get("outputs", "").split(";") if p)]
    if started and not resume:
        raise MedSegIOError(out / MANIFEST, f"an earlier run stopped in this folder after writing outputs of "
                                            f"{len(started)} input(s): continue it (--resume) or replace it "
                                            "(--overwrite), or choose another folder")
    claimed = {r["input"] for r in latest_rows(read_manifest(out)) if r.get("status") in ("ok", "queued")}
    clash = [out / name for f in files if not (resume and str(f) in claimed)
             for name in tasks.of(task).output_names(stem_of(f), fmt, f.suffix.lower() in io.IMAGE2D_SUFFIXES)
             if (out / name).exists()]
    if clash:
        raise MedSegIOError(clash[0], f"exists and this run would write over it ({len(clash)} file(s) in all): "
                                      "choose another folder, or --overwrite to replace them")


def _require_dicom(vol: io.Volume, path: Path, fmt: str) -> None:
    """A DICOM SEG / SR references the series it was made from: refuse other inputs before predicting."""
    if (vol.metadata or {}).get("source_format") != "dicom":
        raise MedSegIOError(path, f"--format {fmt} needs a DICOM series as input (a SEG/SR references the series it "
                                  "lies on); this is not one: use the default format")


def run_one(pred, path: Path, vol: io.Volume, out: Path, task: str, tta: bool = False, cleanup: bool = False,
            force: bool = False, prior=None, fmt: str | None = None) -> dict:
    """Check, predict and write one input (already read). Returns the result row for the summary.
    ``prior``: discs a person named on this input (``io.DiscPoints``; see ``discs.apply_prior``).
    ``fmt``: ``nifti`` (default; PNG for 2D images) or ``dicom-seg`` for segmentation, ``files`` (default:
    CSV, JSON and a disc-label NIfTI) or ``dicom-sr`` for disc labeling."""
    task = tasks.of(task)
    fmt = fmt or task.formats[0]
    task.check_format(fmt)
    pred.check_input(vol, force)  # refused before anything is written
    if fmt.startswith("dicom"):
        _require_dicom(vol, path, fmt)
    names_out = task.output_names(stem_of(path), fmt, vol.is_2d)
    return {"file": str(path), **task.write_result(pred, path, vol, out, names_out, fmt, tta=tta, cleanup=cleanup,
                                                   prior=prior)}


def _status_of(err: BaseException) -> str:
    return "skipped" if isinstance(err, (InputMismatch, MedSegIOError)) else "failed"


# ---------------------------------------------------------------- Dask worker side

_WORKER_MODELS: dict = {}


def _worker_predictor(weights: str, device: str, runtime: str = "auto", precision: str = "auto"):
    """One Predictor per worker process, checkpoint and choice, loaded on first use and kept."""
    from .infer import Predictor

    key = (weights, device, runtime, precision)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS[key] = Predictor.from_checkpoint(weights, device=device, runtime=runtime, precision=precision)
    return _WORKER_MODELS[key]


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def dask_task(weights: str, device: str, path: str, out: str, task: str, tta: bool, cleanup: bool,
              force: bool, fmt: str | None = None, runtime: str = "auto", precision: str = "auto") -> dict:
    """Read, check, predict and write one input on a Dask worker; expected errors come back as a row."""
    t0 = time.perf_counter()
    p = Path(path)
    digest = checksum(p)
    try:
        pred = _worker_predictor(weights, device, runtime, precision)
        row = run_one(pred, p, read_input(p), Path(out), task, tta, cleanup, force, fmt=fmt)
        row.update(status="ok", reason="")
    except NoSpaceLeft:  # the run stops (_run_dask)
        raise
    except EXPECTED_ERRORS as err:
        row = {"file": path, "outputs": [], "status": _status_of(err), "reason": str(err).splitlines()[0]}
    row["seconds"] = round(time.perf_counter() - t0, 3)
    row["sha256"] = digest
    return row


# ---------------------------------------------------------------- the run


def run_batch(pred, files: list[Path], out: Path, *, weights: str, task: str, tta: bool = False,
              cleanup: bool = False, force: bool = False, resume: bool = False, prefetch: int = 2,
              client=None, workers: int | None = None, device: str = "cpu", callback=None,
              cancel: CancelToken | None = None, prior=None, fmt: str | None = None, overwrite: bool = False,
              precision: str = "auto") -> dict:
    """Run ``pred`` (loaded from ``weights``) over ``files`` into ``out``; see the module docstring.
    ``precision``: the mode ``pred`` was loaded with, for Dask workers to load the same (each resolves it on
    its own hardware, as ``pred`` did here).
    ``fmt``: the output format (:func:`run_one`). An output folder that already holds a run (a
    ``manifest.csv`` with rows) is refused unless ``resume`` (skip what it finished) or ``overwrite`` (start
    a new manifest; outputs are replaced as they are written), as training refuses a run folder.
    Returns ``{"written", "skipped", "results", "n_inputs", "manifest"}``."""
    if fmt is not None:
        tasks.of(task).check_format(fmt)
    check_output_folder(Path(out), files, task, fmt, resume=resume, overwrite=overwrite)
    if overwrite and (Path(out) / MANIFEST).is_file():
        (Path(out) / MANIFEST).unlink()
    if prior is not None and (len(files) != 1 or client is not None or workers):
        raise InvalidInput("named prior discs belong to one scan: give exactly one input (and no Dask workers)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    emit = callback or (lambda e: None)
    manifest = Manifest(out, str(pred.config.get("card", {}).get("name") or pred.config["model"]["name"]))
    summary: dict = {"written": [], "skipped": [], "results": [], "n_inputs": len(files),
                     "manifest": str(manifest.path), "resumed": 0}
    if resume:
        stale = remove_stale_temporaries(out)
        summary["stale_temporaries_removed"] = stale
    todo, digests = _queue(manifest, files, out, task, fmt, resume, summary)
    done = summary["resumed"]

    def record(path: Path, row: dict):
        nonlocal done
        done += 1
        status = row.get("status", "ok")
        manifest.add(path, row.get("outputs", []), status, row.get("reason", ""), row.get("seconds", 0.0),
                     row.get("sha256") or digests.get(path) or checksum(path))
        if status == "ok":
            summary["written"].extend(row["outputs"])
            summary["results"].append(row)
        else:
            summary["skipped"].append({"file": str(path), "error": row.get("reason", ""), "status": status})
        emit(Progress(done=done, total=len(files), item=str(path), status=status if status == "ok" else
                      f"{status}: {row.get('reason', '')}"))

    try:
        if client is not None or workers:
            _run_dask(todo, out, weights, device, task, tta, cleanup, force, client, workers, record, cancel, fmt,
                      runtime=pred.runtime, precision=precision)
        else:
            _run_local(pred, todo, out, task, tta, cleanup, force, prefetch, record, cancel, prior, fmt)
    finally:
        manifest.close()
    return summary


def _queue(manifest: Manifest, files: list[Path], out: Path, task: str, fmt: str | None, resume: bool,
           summary: dict) -> tuple[list[Path], dict[Path, str]]:
    """The inputs to run (with ``resume``, those an earlier run did not finish: noted in ``summary``), each
    claimed by a ``queued`` row naming its outputs before any is written (module docstring), and the
    checksums computed on the way."""
    digests: dict[Path, str] = {}
    todo = []
    for path in files:
        if resume:
            digests[path] = checksum(path)
            row = manifest.done(path, digests[path])
            if row is not None:  # finished by an earlier run: its outputs are complete (atomic writes)
                summary["resumed"] += 1
                summary["results"].append({"file": str(path), "outputs": row["outputs"].split(";"), "resumed": True})
                continue
        todo.append(path)
    for path in todo:
        names = tasks.of(task).output_names(stem_of(path), fmt, path.suffix.lower() in io.IMAGE2D_SUFFIXES)
        manifest.add(path, [str(out / n) for n in names], "queued", "", 0.0, digests.get(path, ""))
    return todo, digests


def _run_local(pred, files, out, task, tta, cleanup, force, prefetch, record, cancel, prior=None, fmt=None):
    """One process: the next inputs are read by a background thread while the network runs."""

    def load(path):
        t0 = time.perf_counter()
        try:
            return read_input(path), None, time.perf_counter() - t0
        except EXPECTED_ERRORS as err:
            return None, err, time.perf_counter() - t0

    with ThreadPoolExecutor(max_workers=1) as pool:
        queue = [pool.submit(load, p) for p in files[: max(1, prefetch)]]
        nxt = len(queue)
        for path in files:
            if cancel is not None and cancel.cancelled:
                break
            vol, err, read_s = queue.pop(0).result()
            if nxt < len(files):  # keep at most ``prefetch`` inputs in flight
                queue.append(pool.submit(load, files[nxt]))
                nxt += 1
            t0 = time.perf_counter()
            if err is None:
                try:
                    row = run_one(pred, path, vol, out, task, tta, cleanup, force, prior, fmt)
                    row.update(status="ok", reason="")
                except NoSpaceLeft:  # every later write would fail alike: stop; --resume continues
                    raise
                except EXPECTED_ERRORS as e:
                    err = e
            del vol
            if err is not None:
                row = {"outputs": [], "status": _status_of(err), "reason": str(err).splitlines()[0]}
            row["seconds"] = round(time.perf_counter() - t0 + read_s, 3)
            record(path, row)
        for f in queue:
            f.cancel()


def _run_dask(files, out, weights, device, task, tta, cleanup, force, client, workers, record, cancel, fmt=None,
              runtime="auto", precision="auto"):
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as err:  # pragma: no cover - the dask extra is not installed
        raise InvalidInput("Dask scale-out needs dask.distributed: pip install 'napari-medseg[dask]'") from err
    own = None
    if client is None:
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        own = client = Client(cluster)
        # the local workers share this machine's cores: one torch thread pool each of cores / workers
        client.run(_set_threads, max(1, (os.cpu_count() or 1) // int(workers)))
    try:
        futures = {client.submit(dask_task, weights, device, str(p), str(out), task, tta, cleanup, force, fmt,
                                 runtime, precision, pure=False, retries=1): p for p in files}
        for fut in as_completed(futures):
            path = futures[fut]
            if cancel is not None and cancel.cancelled:
                client.cancel(list(futures))
                break
            try:
                row = fut.result()
            except NoSpaceLeft:  # every later write would fail alike: stop; --resume continues
                client.cancel(list(futures))
                raise
            except Exception as err:  # noqa: BLE001 - a task that crashed twice (the worker died ...)
                row = {"outputs": [], "status": "failed", "reason": f"{type(err).__name__}: {err}".splitlines()[0]}
            record(path, row)
    finally:
        if own is not None:
            cluster = own.cluster
            own.close()
            cluster.close()
