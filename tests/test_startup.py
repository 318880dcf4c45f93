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
                  "nibabel": "nibabel" in sys.modules}))
"""


def _run(*args):
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_help_imports_neither_torch_nor_the_readers():
    seen, _ = _run("--help")
    assert seen == {"rc": 0, "torch": False, "pydicom": False, "nibabel": False}


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
