"""Batch at scale: manifest, resume after kill -9, read-ahead, Dask workers (byte-for-byte equal outputs)."""

import csv
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_medseg import api, io
from napari_medseg.io.errors import MedSegIOError
from napari_medseg.engine import data as D
from napari_medseg.engine.discs import DiscsFlagged

from .conftest import kvasir_test_images

MODEL = "unet-kvasir-192"


@pytest.fixture
def folder(shared, tmp_path):
    """8 Kvasir test images, one unreadable file, one volume the polyp model refuses."""
    inp = kvasir_test_images(shared, tmp_path / "in")
    (inp / "broken.png").write_bytes(b"\x89PNG not really")
    shutil.copy(shared / "volumes" / "ct-spleen-crop.nii.gz", inp / "ct.nii.gz")
    return inp


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "manifest.csv"}


def _manifest(out: Path) -> dict[str, dict]:
    with open(out / "manifest.csv", newline="") as fh:
        return {r["input"]: r for r in csv.DictReader(fh)}


def test_manifest_records_every_input_and_resume_skips_finished_ones(folder, tmp_path):
    out = tmp_path / "out"
    first = api.batch(str(folder), out, model=MODEL, device="cpu")
    rows = _manifest(out)
    assert len(rows) == 10
    assert sum(r["status"] == "ok" for r in rows.values()) == 8
    assert rows[str(folder / "broken.png")]["status"] == "skipped"
    assert "refused" in rows[str(folder / "ct.nii.gz")]["reason"]
    assert all(len(r["sha256"]) == 64 and r["model"] == MODEL for r in rows.values())
    for f in out.iterdir():  # results and the manifest are plain files: nothing executable
        assert not f.stat().st_mode & 0o111, (f.name, oct(f.stat().st_mode))
    # a second run into the same folder: refused with one line, nothing touched, unless resumed or replaced
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(MedSegIOError, match="already holds the results of an earlier run.*--resume.*--overwrite"):
        api.batch(str(folder), out, model=MODEL, device="cpu")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    from napari_medseg.cli import main

    assert main(["predict", "--model", MODEL, str(folder), "--out", str(out), "--device", "cpu"]) == 2
    again = api.batch(str(folder), out, model=MODEL, device="cpu", resume=True)
    assert again["resumed"] == 8 and not again["written"]  # only the two bad inputs were tried again
    assert len(again["skipped"]) == 2
    assert len(first["written"]) == 8


def test_kill_9_then_resume_gives_the_same_files(folder, tmp_path):
    reference = tmp_path / "ref"
    api.batch(str(folder), reference, model=MODEL, device="cpu")
    rng = random.Random(0)
    cmd = [sys.executable, "-m", "napari_medseg.cli", "predict", "--model", MODEL, str(folder), "--device", "cpu"]
    for attempt in range(5):  # kill -9 at 5 random points
        out = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for = rng.randint(1, 6)  # kill after a random number of finished outputs
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if out.is_dir() and len(list(out.glob("*_seg.png"))) >= wait_for:
                time.sleep(rng.random() * 0.5)
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = sorted(p.name for p in out.glob("*_seg.png"))
        for name in partial:  # what is there is complete (atomic writes)
            assert (out / name).read_bytes() == (reference / name).read_bytes()
        res = subprocess.run(cmd + ["--out", str(out), "--resume"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        assert _outputs(out) == _outputs(reference)
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_an_output_renamed_just_before_a_kill_is_resumed_not_refused(folder, tmp_path):
    """The window kill -9 can hit: an output renamed into place, its ``ok`` row not yet written. The run's
    ``queued`` rows claim it, so --resume writes it again; a file no run claimed is still refused."""
    out = tmp_path / "out"
    api.batch(str(folder), out, model=MODEL, device="cpu")
    reference = _outputs(out)
    lines = (out / "manifest.csv").read_text().splitlines(keepends=True)
    queued = [ln for ln in lines if ",queued," in ln]
    ok = [ln for ln in lines if ",ok," in ln]
    assert len(queued) == 10 and len(ok) == 8
    (out / "manifest.csv").write_text(lines[0] + "".join(queued) + "".join(ok[:3]))  # killed before row 4
    assert len(_outputs(out)) == 8  # ... with all 8 outputs in place, the 4th among them
    with pytest.raises(MedSegIOError, match="earlier run.*--resume"):
        api.batch(str(folder), out, model=MODEL, device="cpu")
    (out / "manifest.csv").write_text(lines[0] + "".join(queued))  # killed before the first ok row
    with pytest.raises(MedSegIOError, match="stopped in this folder after writing outputs of 8 input.*--resume"):
        api.batch(str(folder), out, model=MODEL, device="cpu")
    (out / "manifest.csv").write_text(lines[0] + "".join(queued) + "".join(ok[:3]))
    again = api.batch(str(folder), out, model=MODEL, device="cpu", resume=True)
    assert again["resumed"] == 3 and len(again["written"]) == 5
    assert _outputs(out) == reference
    # the same folder state without the queued rows: the 4th output is nobody's run -> refused, kept
    (out / "manifest.csv").write_text(lines[0] + "".join(ok[:3]))
    with pytest.raises(MedSegIOError, match="would write over it"):
        api.batch(str(folder), out, model=MODEL, device="cpu", resume=True)
    assert _outputs(out) == reference


def test_two_local_dask_workers_write_the_same_bytes(folder, tmp_path):
    single, spread = tmp_path / "single", tmp_path / "spread"
    api.batch(str(folder), single, model=MODEL, device="cpu", prefetch=0, runtime="torch", precision="fp32")
    summary = api.batch(str(folder), spread, model=MODEL, device="cpu", workers=2, runtime="torch", precision="fp32")
    assert len(summary["written"]) == 8 and len(summary["skipped"]) == 2
    assert _outputs(spread) == _outputs(single)
    assert {r["status"] for r in _manifest(spread).values()} == {"ok", "skipped"}


def test_class_counts_are_bincount_in_any_memory_order():
    from napari_medseg.engine.metrics import class_counts

    labels = np.random.default_rng(0).integers(0, 4, (6, 7, 9)).astype(np.uint8)
    for view in (labels, np.moveaxis(labels, 0, -1), np.asfortranarray(labels), labels[:, ::2]):
        for k in (2, 4, 6):
            np.testing.assert_array_equal(class_counts(view, k), np.bincount(view.ravel(), minlength=k))


@pytest.mark.filterwarnings("ignore:bf16 was asked for on a CPU without bf16:UserWarning")  # CPU-dependent, on purpose
def test_a_worker_loads_the_runtime_and_precision_it_is_sent():
    """Dask workers load their own Predictor: it must be the one the user chose, not the worker's default."""
    from napari_medseg.engine.batch import _worker_predictor

    weights = str(api.bundled_weights()[MODEL])
    for runtime, precision in (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32")):
        pred = _worker_predictor(weights, "cpu", runtime, precision)
        assert (pred.runtime, pred.precision.name) == (runtime, precision)


def test_a_scheduler_and_two_worker_processes(folder, tmp_path):
    """Two 'machines': a Dask scheduler and two workers started as separate processes on localhost."""
    single = tmp_path / "single"
    api.batch(str(folder), single, model=MODEL, device="cpu")
    port = 20000 + random.Random().randint(0, 20000)
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", str(port),
                               "--dashboard-address", ":0", "--host", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(3)
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                           "--nthreads", "1", "--nworkers", "1", "--no-dashboard"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            out = tmp_path / "cluster"
            res = subprocess.run([sys.executable, "-m", "napari_medseg.cli", "predict", "--model", MODEL,
                                  str(folder), "--out", str(out), "--scheduler", address],
                                 capture_output=True, text=True, timeout=300, cwd=bin_dir)
            assert res.returncode == 0, res.stderr
            assert _outputs(out) == _outputs(single)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_overwrite_starts_a_new_manifest(folder, tmp_path):
    out = tmp_path / "out"
    api.batch(str(folder), out, model=MODEL, device="cpu")
    again = api.batch(str(folder), out, model=MODEL, device="cpu", overwrite=True)
    from napari_medseg.engine.batch import read_manifest

    rows = read_manifest(out)  # this run's rows only: one queued and one final row per input
    assert len(again["written"]) == 8 and len(rows) == 20
    assert [r["status"] for r in rows].count("queued") == 10
    with pytest.raises(ValueError, match="resume or overwrite"):
        api.batch(str(folder), out, model=MODEL, device="cpu", overwrite=True, resume=True)


def test_the_users_own_files_are_never_written_over_and_refusals_come_before_the_model(folder, tmp_path, monkeypatch):
    """Tried as a new user would: ``--out`` naming a folder of the user's own results (no manifest) used to
    replace ``a_seg.png`` silently; ``--out`` naming a file gave a raw ``[Errno 17]`` after the model loaded."""
    from napari_medseg.cli import main

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded before the output folder was checked")

    out = tmp_path / "userout"
    out.mkdir()
    stem = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")[0].stem
    mine = out / f"{stem}_seg.png"
    mine.write_bytes(b"the user's own work")
    with monkeypatch.context() as m:
        m.setattr(api, "load", no_model)
        with pytest.raises(MedSegIOError, match=rf"{stem}_seg.png.*would write over it \(1 file"):
            api.batch(str(folder), out, model=MODEL, device="cpu")
        afile = tmp_path / "results.txt"
        afile.write_text("not a folder")
        with pytest.raises(MedSegIOError, match="exists and is not a folder"):
            api.batch(str(folder), afile, model=MODEL, device="cpu")
        assert main(["predict", "--model", MODEL, str(folder), "--out", str(out), "--device", "cpu"]) == 2
    assert mine.read_bytes() == b"the user's own work" and sorted(p.name for p in out.iterdir()) == [mine.name]
    done = api.batch(str(folder), out, model=MODEL, device="cpu", overwrite=True)  # asked for: replaced
    assert str(mine) in done["written"] and mine.read_bytes() != b"the user's own work"


def test_a_run_that_wrote_nothing_does_not_block_the_next(shared, tmp_path):
    """Every input refused by the input check: the manifest records why, and the rerun with --force is not
    told to --resume or --overwrite a run that has nothing to keep."""
    out = tmp_path / "out"
    ct = shared / "volumes" / "ct-spleen-crop.nii.gz"
    first = api.batch(str(ct), out, model=MODEL, device="cpu")
    assert not first["written"] and (out / "manifest.csv").is_file()
    again = api.batch(str(ct), out, model=MODEL, device="cpu", force=True)
    assert len(again["written"]) == 1


def test_a_skipped_input_is_said_once(folder, tmp_path, capsys):
    from napari_medseg.cli import main

    assert main(["predict", "--model", MODEL, str(folder), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "inputs:" not in line]
    assert sum("broken.png" in line for line in lines) == 1 and sum("ct.nii.gz" in line for line in lines) == 1, lines
    assert next(line for line in lines if "broken.png" in line).startswith("skipped: ")


def test_a_bug_shaped_value_error_keeps_its_traceback_while_bad_input_is_one_line(folder, tmp_path, monkeypatch,
                                                                                   capsys):
    """A ValueError that is not ours (a bug, ours or a library's) is not "bad input": the CLI does not turn
    it into exit 2 and a line, and a batch does not record it as a skipped file; our own checks still do."""
    from napari_medseg.cli import main
    from napari_medseg.engine import infer
    from napari_medseg.io.errors import InvalidInput

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(next(p for p in sorted(folder.iterdir()) if p.suffix == ".jpg"), one)

    def bug(self, *a, **k):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(infer.Predictor, "segment_image", bug)
    with pytest.raises(ValueError, match="could not be broadcast"):
        main(["predict", "--model", MODEL, str(one), "--out", str(tmp_path / "a"), "--device", "cpu"])
    with pytest.raises(ValueError, match="could not be broadcast"):
        api.batch(str(one), tmp_path / "b", model=MODEL, device="cpu")

    def refusal(self, *a, **k):
        raise InvalidInput("this image cannot be used: a check of ours")

    monkeypatch.setattr(infer.Predictor, "segment_image", refusal)
    capsys.readouterr()
    assert main(["predict", "--model", MODEL, str(one), "--out", str(tmp_path / "c"), "--device", "cpu"]) == 2
    assert "a check of ours" in capsys.readouterr().err
    summary = api.batch(str(one), tmp_path / "d", model=MODEL, device="cpu")
    assert not summary["written"] and "a check of ours" in summary["skipped"][0]["error"]


def test_api_batch_and_evaluate_take_the_one_prediction_path(shared, tmp_path):
    """``Predictor.segment`` and ``label_discs`` are the one path: an RGB stack through ``api.segment`` gives
    per image what ``api.batch`` writes for the same images as files, a volume the same labels, a spine scan
    the same discs (Dask workers run the batch's function: test_two_local_dask_workers_write_the_same_bytes;
    the widgets call api.segment / api.label_discs)."""
    import imageio.v3 as iio

    layout = D.discover(shared / "kvasir-seg")
    inp = tmp_path / "in"
    inp.mkdir()
    crops = []
    for k, stem in enumerate(D.split(layout)["test"][:2]):
        crop = np.asarray(iio.imread(layout.pairs[stem][0]))[:288, :320, :3]
        iio.imwrite(inp / f"frame{k}.png", crop)
        crops.append(crop)
    stack = api.segment(np.stack(crops), model=MODEL, device="cpu")  # (2, H, W, 3) uint8: a stack of RGB images
    api.batch(str(inp), tmp_path / "out2d", model=MODEL, device="cpu")
    for k in range(2):
        written = io.read_image2d(tmp_path / "out2d" / f"frame{k}_seg.png", kind="labels").data
        np.testing.assert_array_equal(stack.labels[k], np.asarray(written))
    assert stack.labels.shape == (2, 288, 320) and 0 < stack.labels.mean() < 1

    acdc = D.discover(shared / "acdc")
    image = acdc.pairs[D.split(acdc)["test"][0]][0]
    vol = io.read_nifti(image)
    seg = api.segment(vol, model="unet-acdc-300", device="cpu")
    api.batch(str(image), tmp_path / "out3d", model="unet-acdc-300", device="cpu")
    written = io.read_nifti(next((tmp_path / "out3d").glob("*_seg.nii.gz")), kind="labels")
    np.testing.assert_array_equal(seg.labels, np.asarray(written.data))
    assert len(np.unique(seg.labels)) == 4

    scan = shared / "spine-discs/images/spine_vb3_02.nii.gz"
    with warnings.catch_warnings():  # this scan's flags are beside the point here
        warnings.simplefilter("ignore", DiscsFlagged)
        discs = api.label_discs(scan, model="hourglass-spine-discs", device="cpu")
    api.batch(str(scan), tmp_path / "discs", model="hourglass-spine-discs", device="cpu")
    back = io.read_points(tmp_path / "discs" / "spine_vb3_02_discs.json")
    assert back.names == discs.names and len(discs) >= 5
    np.testing.assert_allclose(back.world, discs.world, atol=1e-6)
    assert back.levels == discs.levels and back.verdict == discs.verdict
