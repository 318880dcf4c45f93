"""The README's main command, headless: screenshots and a summary of the loaded sample data."""

import json

import numpy as np
import pytest

from napari_medseg.cli import main

pytestmark = pytest.mark.gui


def test_demo_headless_writes_screenshots_and_summary(tmp_path, qapp):
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["samples"]) == {"skin", "ct_dicom", "mr_lumbar", "endoscopy", "mr_cardiac"}
    assert summary["skipped"] == {}
    ct = summary["samples"]["ct_dicom"][0]
    assert ct["shape"] == [20, 512, 512] and ct["info"]["Modality"] == "CT"
    assert [e["type"] for e in summary["samples"]["mr_lumbar"]] == ["image", "points"]
    # the bundled models ran on the samples and their results were written
    from napari_medseg import io

    discs = summary["results"]["mr_lumbar"]
    assert discs["model"] == "hourglass-spine-discs"
    saved = io.read_points(discs["file"])
    assert len(saved) >= 5 and [io.disc_name(n) for n in saved.numbers] == discs["discs"]
    polyp = summary["results"]["endoscopy"]
    seg = io.read_image2d(polyp["file"], kind="labels")
    assert 0.02 < (np.asarray(seg.data) > 0).mean() < 0.9  # a polyp-sized region, not empty or everything
    from PIL import Image

    for key, path in summary["screenshots"].items():
        img = np.asarray(Image.open(path).convert("RGB"))
        picture = img[: int(img.shape[0] * 0.7)]  # above the caption band
        assert img.shape[0] > 200 and picture.std() > 10, key  # a real picture, not a blank canvas
        caption = summary["captions"][key]  # said below the picture: what it shows, which model ran, legend
        if key in summary["results"]:
            assert caption["title"].endswith(summary["results"][key]["model"]), caption
            assert any("reference" in label for label in caption["legend"]), caption
        else:
            assert "No model ran" in caption["lines"][0], caption
    assert summary["captions"]["mr_cardiac"]["legend"][:3] == ["RV (prediction)", "Myo (prediction)", "LV (prediction)"]
    assert any("red ring" in label or "flagged" in label for label in summary["captions"]["mr_lumbar"]["legend"])



def test_demo_without_any_sample_says_why_and_fails(tmp_path, qapp, monkeypatch, capsys):
    """No ../shared and no internet: the demo must not print 'wrote 0 screenshots' and exit 0."""
    from napari_medseg._napari import demo
    from napari_medseg.io.errors import MedSegIOError

    def unavailable(viewer, key):
        raise MedSegIOError(key, "not in the cache and the download failed (offline)")

    monkeypatch.setattr(demo, "_add_sample", unavailable)
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no sample could be opened" in err and "NAPARI_MEDSEG_DATA_DIR" in err


def test_demo_without_napari_names_the_extra_in_one_line(tmp_path, monkeypatch, capsys):
    """From the wheel without its napari extra: one line naming what to install, exit 2, no traceback."""
    import sys

    monkeypatch.setitem(sys.modules, "napari", None)  # import napari -> ImportError, as when not installed
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'napari-medseg[pyqt6]'" in err[0] and "Traceback" not in err[0]
    assert not list(tmp_path.iterdir())


def test_demo_offline_without_a_data_folder_runs_a_model_on_the_shipped_sample(tmp_path, qapp, monkeypatch, capsys):
    """No data folder, an empty cache, no network: the sample inside the package still opens, its bundled
    model runs and its picture is written; the other samples are skipped with one line each, exit 0."""
    import pooch

    from napari_medseg.io import datasets

    def offline(*_a, **_k):
        raise OSError("HTTPSConnectionPool(host='github.com', port=443): Max retries exceeded")

    monkeypatch.delenv(datasets.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(datasets.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(pooch, "retrieve", offline)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--headless", "--out", "out"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["samples"]) == {"skin"} and set(summary["results"]) == {"skin"}
    assert [e["shape"] for e in summary["samples"]["skin"]] == [[512, 512, 3], [512, 512]]  # RGB image, 2-D mask
    assert summary["results"]["skin"]["model"] in ("unet-ph2", "bcdunet-ph2")
    from napari_medseg import io

    seg = io.read_image2d(tmp_path / summary["results"]["skin"]["file"], kind="labels")
    lesion = (np.asarray(seg.data) > 0).mean()
    assert 0.1 < lesion < 0.5, lesion  # the shipped crop's lesion covers 22 % of it
    assert (tmp_path / "out" / "screenshot_skin.png").is_file()
    err = capsys.readouterr()
    assert "HTTPSConnectionPool" not in err.out + err.err
    assert "README" not in err.out + err.err  # no pointer to a file a user of the wheel does not have
    said = [ln for ln in (err.out + err.err).splitlines() if ln.strip()]
    assert len(said) == len(set(said)), said  # nothing printed twice
    assert set(summary["skipped"]) == {"ct_dicom", "mr_lumbar", "endoscopy", "mr_cardiac"}
