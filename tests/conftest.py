"""Shared test setup: real data from ../shared/data, temp XDG folders, napari's viewer fixture."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
VOLUMES = SHARED / "volumes"

os.environ["NAPARI_MEDSEG_DATA_DIR"] = str(SHARED)
_tmp_xdg = Path(os.environ.get("TMPDIR", "/tmp")) / f"medseg-xdg-{os.getpid()}"
os.environ.setdefault("XDG_CONFIG_HOME", str(_tmp_xdg / "config"))
os.environ.setdefault("XDG_CACHE_HOME", str(_tmp_xdg / "cache"))
os.environ.setdefault("NAPARI_MEDSEG_CACHE", str(_tmp_xdg / "medseg-cache"))

if not VOLUMES.is_dir():
    raise RuntimeError(f"test data not found at {SHARED}; set NAPARI_MEDSEG_DATA_DIR to the shared data folder")


@pytest.fixture(scope="session")
def volumes() -> Path:
    return VOLUMES


@pytest.fixture(scope="session")
def shared() -> Path:
    return SHARED


@pytest.fixture
def copy_of(tmp_path):
    """Copy a file or folder from the shared data into tmp_path (the shared copy is read-only)."""

    def _copy(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or src.name)
        if src.is_dir():
            shutil.copytree(src, dst)
            for p in dst.rglob("*"):
                p.chmod(0o644 if p.is_file() else 0o755)
            dst.chmod(0o755)
        else:
            shutil.copy(src, dst)
            dst.chmod(0o644)
        return dst

    return _copy


NIFTI_FILES = sorted(p.name for p in VOLUMES.glob("*.nii.gz"))
