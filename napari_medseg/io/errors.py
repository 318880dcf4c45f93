"""Errors raised by the readers and writers: one line, naming the file and the problem."""

from __future__ import annotations

import errno
import os


class MedSegIOError(Exception):
    """A file could not be read or written. ``str(err)`` is one line: ``<file>: <problem>``."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)

    def __reduce__(self):  # pickled as it was made (a Dask worker's error reaches the scheduler's client)
        return self.__class__, (self.path, self.problem)


class NoSpaceLeft(MedSegIOError):
    """The device (or the user's quota) ran out of space while a file was written. Writes are atomic, so
    nothing half-written stays; a run stops at once (every later write would fail the same way) and
    continues where it stopped once there is space (``--resume``)."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_error(path, err: OSError, what: str = "could not write") -> MedSegIOError:
    """The one-line error for an ``OSError`` writing ``path``: :class:`NoSpaceLeft` when the disk is full."""
    if getattr(err, "errno", None) in NO_SPACE:
        return NoSpaceLeft(path, f"{what}: no space left on the device (nothing half-written is left): free "
                                 "space, then run the same command again (predict: --resume; train: --resume)")
    return MedSegIOError(path, f"{what}: {err.strerror or err}")


class InvalidInput(ValueError):
    """A value the user gave cannot be used: an option, a file's content, a checkpoint, a layer. Raised by
    this package's own checks (never ``ValueError`` itself), so that a ``ValueError`` from a bug, ours or a
    library's, keeps its traceback instead of being shown as bad input. A ``ValueError``, so that callers that
    catch one keep working."""


class MedSegIOWarning(UserWarning):
    """Something in a file is suspicious but it could still be read (NaN voxels, uneven steps, ...)."""


# What bad input (a file, a path, an option, a checkpoint) can raise: the CLI answers these with one line and
# exit 2, a batch skips the file with the reason, the widgets show the message; anything else is a bug and
# keeps its traceback (a bare ValueError included: our checks raise InvalidInput). FloatingPointError: a loss or an input that became NaN; OSError: a missing or
# unwritable path; MemoryError: an input too large for this machine.
USER_ERRORS = (MedSegIOError, InvalidInput, MemoryError, OSError, FloatingPointError)
