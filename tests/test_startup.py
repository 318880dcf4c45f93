"""Start-up: `--help`, argument errors and a missing input path are answered before torch (and, for
--help, before the image readers) are imported. Checked in a fresh interpreter: the modules a call
imported are what its start-up costs (timings belong in docs/benchmarks.md, not in a unit test)."""

import json
import subprocess
import sys

PROBE = """
import json, sys
from napari_medseg.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules, "pydicom": "pydicom" in sys.modules,
                  "nibabel": "nibabel" in sys.modules, "monai": "monai" in sys.modules}))
"""


def _run(*args, env=None):
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_help_imports_neither_torch_nor_the_readers():
    seen, _ = _run("--help")
    assert seen == {"rc": 0, "torch": False, "pydicom": False, "nibabel": False, "monai": False}


def test_missing_input_and_unknown_model_are_answered_before_torch(tmp_path):
    seen, err = _run("predict", "--model", "unet-kvasir-192", str(tmp_path / "no-such.png"), "--out", str(tmp_path / "o"))
    assert seen["rc"] == 2 and not seen["torch"], seen
    assert err.strip().endswith("no-such.png: no such file or folder")
    (tmp_path / "a.png").write_bytes(b"")
    seen, err = _run("predict", "--model", "no-such-model", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"))
    assert seen["rc"] == 2 and not seen["torch"], seen
    assert "no bundled weights named 'no-such-model'" in err
    seen, err = _run("label-discs", "--model", "hourglass-spine-discs", str(tmp_path / "nothing*.nii.gz"),
                     "--out", str(tmp_path / "o"))
    assert seen["rc"] == 2 and not seen["torch"] and "matches no file" in err, (seen, err)


def _predict_twice(model: str, dataset, tmp_path):
    """`predict --runtime onnxruntime` on the first test case of ``dataset``, twice with one graph cache: the
    first call exports the graph (and builds the network, MONAI included), the second must not import MONAI.
    Returns the input and both output folders."""
    import os

    from napari_medseg.engine import data as D

    layout = D.discover(dataset)
    image = layout.pairs[D.split(layout)["test"][0]][0]
    env = {**os.environ, "NAPARI_MEDSEG_CACHE": str(tmp_path / "cache")}
    outs = []
    for i in range(2):
        outs.append(tmp_path / f"out{i}")
        seen, err = _run("predict", "--model", model, "--device", "cpu", "--runtime", "onnxruntime",
                         str(image), "--out", str(outs[-1]), env=env)
        assert seen["rc"] == 0, err
        assert seen["monai"] == (i == 0), (i, seen)
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    return image, outs


def test_a_cached_graph_starts_without_building_the_torch_network(shared, tmp_path):
    """`predict --runtime onnxruntime`: a later call finds the graph in the cache and never builds the
    network, so MONAI (most of the start-up) is not imported. The labels are the same."""
    image, outs = _predict_twice("unet-kvasir-192", shared / "kvasir-seg", tmp_path)
    name = f"{image.stem}_seg.png"
    assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_a_volume_with_a_cached_graph_starts_without_the_torch_network(shared, tmp_path):
    """A volume under `--batch-size auto` (the default) sizes its slice batches from the graph's own value
    shapes, so the second call still never builds the torch network (no MONAI) and writes the same labels."""
    import nibabel as nib
    import numpy as np

    _volume, outs = _predict_twice("unet-acdc-300", shared / "acdc", tmp_path)
    written = sorted(p.name for p in outs[0].iterdir() if p.name.endswith(".nii.gz"))
    assert written and written == sorted(p.name for p in outs[1].iterdir() if p.name.endswith(".nii.gz"))
    for name in written:
        assert np.array_equal(np.asarray(nib.load(outs[0] / name).dataobj), np.asarray(nib.load(outs[1] / name).dataobj))
