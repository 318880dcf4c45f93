"""The README's main command, headless: screenshots and a summary of the loaded sample data."""

import json

import pytest

from napari_medseg.cli import main

pytestmark = pytest.mark.gui


def test_demo_headless_writes_screenshots_and_summary(tmp_path, qapp):
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["samples"]) == {"ct_dicom", "mr_spine", "endoscopy"}
    ct = summary["samples"]["ct_dicom"][0]
    assert ct["shape"] == [20, 512, 512] and ct["info"]["Modality"] == "CT"
    assert [e["type"] for e in summary["samples"]["mr_spine"]] == ["image", "points"]
    from PIL import Image
    import numpy as np

    for key, path in summary["screenshots"].items():
        img = np.asarray(Image.open(path))
        assert img.shape[0] > 200 and img.std() > 10, key  # a real picture, not a blank window

