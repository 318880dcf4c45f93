"""The built wheel carries napari.yaml and registers it: checked in a fresh virtual environment."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_npe2_lists_contributions(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        check=True, capture_output=True,
    )
    [wheel] = (tmp_path / "dist").glob("napari_medseg-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read("napari_medseg/napari.yaml").decode()
        entry_points = next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        assert "napari.manifest" in zf.read(entry_points).decode()
    assert shipped == (ROOT / "napari.yaml").read_text()
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    shipped_samples = {f"napari_medseg/samples/{p.name}" for p in (ROOT / "napari_medseg" / "samples").iterdir()}
    assert "napari_medseg/samples/NOTICE.md" in shipped_samples and shipped_samples <= names
    sizes = {n: zipfile.ZipFile(wheel).getinfo(n).file_size for n in shipped_samples if not n.endswith(".md")}
    assert sum(sizes.values()) <= 1024 * 1024, sizes  # at most 1 MB of samples in all
    for bundled in (ROOT / "napari_medseg" / "weights").glob("*/config.json"):
        for f in ("model.safetensors", "config.json"):
            assert f"napari_medseg/weights/{bundled.parent.name}/{f}" in names

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "npe2"], check=True, capture_output=True)
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, capture_output=True)
    subprocess.run(
        [str(venv / "bin" / "npe2"), "parse", "napari-medseg", "-o", str(tmp_path / "manifest.json")],
        check=True, capture_output=True, text=True,
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    contrib = manifest["contributions"]
    assert manifest["name"] == "napari-medseg"
    assert {w["command"] for w in contrib["writers"]} == {
        "napari-medseg.write_labels", "napari-medseg.write_image", "napari-medseg.write_points"}
    assert contrib["readers"][0]["accepts_directories"] is True
    assert {s["key"] for s in contrib["sample_data"]} >= {"ct_dicom", "mr_spine", "endoscopy", "skin"}
    assert [s["key"] for s in contrib["sample_data"]][:2] == ["skin", "ct_abdomen"]  # the shipped ones first
    # every command points at a module inside the wheel
    src = yaml.safe_load(shipped)
    for cmd in src["contributions"]["commands"]:
        module = cmd["python_name"].split(":")[0].replace(".", "/") + ".py"
        with zipfile.ZipFile(wheel) as zf:
            assert module in zf.namelist(), module
