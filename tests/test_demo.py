"""The README's main command, headless: screenshots and a summary of the loaded sample data."""

import json

import numpy as np
import pytest

from napari_medseg.cli import main

pytestmark = pytest.mark.gui


def test_demo_headless_writes_screenshots_and_summary(tmp_path, qapp):
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["samples"]) == {"ct_dicom", "mr_lumbar", "endoscopy", "mr_cardiac"}
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
        img = np.asarray(Image.open(path))
        assert img.shape[0] > 200 and img.std() > 10, key  # a real picture, not a blank window



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
