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


# ---------------------------------------------------------------- tiny datasets and checkpoints


def _subset(tmp, name, train, val, test):
    """A tiny copy (symlinks) of a shared dataset with its own split.json."""
    from napari_medseg.engine import data as D

    import json
    import os

    layout = D.discover(SHARED / name)
    dirs = {"seg2d": ("images", "masks"), "seg3d": ("imagesTr", "labelsTr"), "discs": ("images", "labels")}[layout.kind]
    root = tmp / name
    for d in dirs:
        (root / d).mkdir(parents=True)
    for s in train + val + test:
        img, tgt = layout.pairs[s]
        os.symlink(img, root / dirs[0] / img.name)
        os.symlink(tgt, root / dirs[1] / tgt.name)
    if (SHARED / name / "dataset.json").is_file():
        shutil.copy(SHARED / name / "dataset.json", root / "dataset.json")
    (root / "split.json").write_text(json.dumps({"train": train, "val": val, "test": test}))
    return root


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    import json

    tmp = tmp_path_factory.mktemp("data")
    out = {}
    for name, n in (("kvasir-seg", (4, 2, 2)), ("acdc", (3, 1, 1)), ("spine-discs", (6, 1, 1))):
        parts = json.loads((SHARED / name / "split.json").read_text())
        out[name] = _subset(tmp, name, parts["train"][: n[0]], parts["val"][: n[1]], parts["test"][: n[2]])
    return out


def kvasir_test_images(shared, folder, n: int = 8):
    """Copy the first ``n`` Kvasir-SEG test-split images into ``folder`` (created); returns it."""
    from napari_medseg.engine import data as D

    folder.mkdir(parents=True, exist_ok=True)
    layout = D.discover(shared / "kvasir-seg")
    for stem in D.split(layout)["test"][:n]:
        src = layout.pairs[stem][0]
        shutil.copy(src, folder / src.name)
    return folder


def train_opts(model, data, out, **kw):
    from napari_medseg.engine.train import TrainOptions

    base = dict(model=model, data=str(data), out=str(out), epochs=1, batch_size=2, input_size=64, seed=1,
                precision="fp32", max_steps_per_epoch=2)
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture(scope="session")
def trained(tiny, tmp_path_factory):
    """Small checkpoints trained for a few steps on real data: RGB 2D, grey 3D slices, discs."""
    from napari_medseg.engine.train import train

    out = tmp_path_factory.mktemp("runs")
    seg = train(train_opts("unet", tiny["kvasir-seg"], out / "seg"))["best_checkpoint"]
    vol = train(train_opts("unet", tiny["acdc"], out / "vol"))["best_checkpoint"]
    hg = train(train_opts("hourglass", tiny["spine-discs"], out / "hg", input_size=128, epochs=8, batch_size=3,
                          max_steps_per_epoch=None, lr=1e-3))["best_checkpoint"]
    return {"seg": seg, "vol": vol, "hg": hg}
