"""Atomic file writing: write to a temporary file in the target folder, then rename.

A crash (or an exception from the encoder) never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import MedSegIOError, write_error


def current_umask() -> int:
    """The process umask, read without changing it where the system says it (Linux), else by setting and
    restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode a plain ``open()`` / ``mkdir()`` would give: 0666 / 0777 less the umask. Temporary files
    and folders are created 0600 / 0700, so results renamed into place get this mode instead (colleagues
    on a shared server can read what the umask lets them)."""
    return (0o777 if directory else 0o666) & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    The temporary name keeps the full suffix (``.nii.gz``) so that libraries choosing the
    encoder from the extension still do the right thing.
    """
    final = Path(path)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise MedSegIOError(final, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise MedSegIOError(final, f"output folder {parent} is not writable")
    suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=suffix, dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, default_mode())
        os.replace(tmp_path, final)
    except OSError as err:
        raise write_error(final, err) from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
