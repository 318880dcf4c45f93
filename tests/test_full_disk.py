"""A real disk that fills up: a small tmpfs mounted for the test (the tests run as root; skipped, with the
reason, where mounting is not allowed). ``predict``, ``train`` and ``export`` stop with one line (exit 2)
when space runs out, leave no half-written output, manifest or checkpoint, and finish the same work once
there is space again (``--resume``). Two ``predict`` processes writing one folder tear no file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from napari_medseg import api
from napari_medseg.cli import main
from napari_medseg.engine.batch import read_manifest

from .conftest import kvasir_test_images, train_opts

MODEL = "unet-kvasir-192"


@pytest.fixture
def small_disk(tmp_path):
    """A fresh tmpfs of 24 MB; ``fill(leave)`` fills it up to ``leave`` bytes free, ``free()`` empties the
    filler."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small filesystem needs root and mount(8)")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")

    class Disk:
        path = mnt
        filler = mnt / ".filler"

        def fill(self, leave: int) -> None:
            st = os.statvfs(mnt)
            free = st.f_bavail * st.f_frsize + (self.filler.stat().st_size if self.filler.exists() else 0)
            with open(self.filler, "wb") as fh:
                fh.write(b"\0" * max(0, free - leave))

        def free(self) -> None:
            self.filler.unlink(missing_ok=True)

    try:
        yield Disk()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def images(shared, tmp_path):
    return kvasir_test_images(shared, tmp_path / "in")


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name not in ("manifest.csv", ".filler")}


def test_predict_stops_with_one_line_on_a_full_disk_and_resumes(small_disk, images, tmp_path, capsys):
    reference = tmp_path / "ref"
    api.batch(str(images), reference, model=MODEL, device="cpu")
    out = small_disk.path / "out"
    out.mkdir()
    small_disk.fill(leave=24_000)  # about six 4 kB pages: the manifest and one or two masks
    capsys.readouterr()
    assert main(["predict", "--model", MODEL, str(images), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("no space left on the device") == 1 and "--resume" in err
    written = _outputs(out)
    assert 0 < len(written) < 8 and not [n for n in written if n.startswith(".")]  # no temporary file left
    for name, data in written.items():  # what is there is whole
        assert data == (reference / name).read_bytes()
    rows = read_manifest(out)  # complete lines only, none torn
    assert sum(r["status"] == "ok" for r in rows) <= len(written)
    small_disk.free()
    assert main(["predict", "--model", MODEL, str(images), "--out", str(out), "--device", "cpu", "--resume"]) == 0
    assert _outputs(out) == _outputs(reference)


def test_training_stops_with_one_line_on_a_full_disk_and_resumes(small_disk, tiny):
    from napari_medseg.engine.train import train
    from napari_medseg.io.errors import USER_ERRORS, NoSpaceLeft

    run = small_disk.path / "run"
    train(train_opts("unet", tiny["kvasir-seg"], run, epochs=1))
    last = (run / "last" / "model.safetensors").read_bytes()
    small_disk.fill(leave=200_000)  # less than one checkpoint
    with pytest.raises(NoSpaceLeft, match="no space left on the device") as err:
        train(train_opts("unet", tiny["kvasir-seg"], run, epochs=2, resume=True))
    assert isinstance(err.value, USER_ERRORS) and len(str(err.value).splitlines()) == 1  # the CLI: one line, exit 2
    assert (run / "last" / "model.safetensors").read_bytes() == last  # the last checkpoint intact
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # nothing half-written beside it
    small_disk.free()
    done = train(train_opts("unet", tiny["kvasir-seg"], run, epochs=2, resume=True))
    assert done["epochs_done"] == 2


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_on_a_full_disk_is_one_line_and_no_file(small_disk, fmt, capsys):
    small_disk.fill(leave=100_000)
    target = small_disk.path / f"unet.{'onnx' if fmt == 'onnx' else 'pt'}"
    capsys.readouterr()
    assert main(["export", "--model", MODEL, str(target), "--format", fmt]) == 2
    assert "no space left on the device" in capsys.readouterr().err
    assert sorted(p.name for p in small_disk.path.iterdir()) == [".filler"]
    small_disk.free()
    assert main(["export", "--model", MODEL, str(target), "--format", fmt]) == 0
    assert target.stat().st_size > 500_000


def test_two_predict_processes_into_one_folder_tear_no_file(images, tmp_path):
    """Both runs claim the folder; whatever each writes is whole, the manifest's lines are whole and a
    third run with --resume ends with exactly the reference files."""
    reference = tmp_path / "ref"
    api.batch(str(images), reference, model=MODEL, device="cpu")
    out = tmp_path / "shared-out"
    cmd = [sys.executable, "-m", "napari_medseg.cli", "predict", "--model", MODEL, str(images), "--out", str(out),
           "--device", "cpu"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    assert all(c in (0, 2) for c in codes), codes  # the later one may be refused: the folder holds a run
    for name, data in _outputs(out).items():
        assert data == (reference / name).read_bytes(), name
    text = (out / "manifest.csv").read_text()
    assert text.endswith("\n") and all(line.count(",") >= 6 for line in text.splitlines())
    assert main(["predict", "--model", MODEL, str(images), "--out", str(out), "--device", "cpu", "--resume"]) == 0
    assert _outputs(out) == _outputs(reference)
