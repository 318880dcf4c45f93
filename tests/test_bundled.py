"""Every bundled model loads in a fresh install and gives a sensible result on one real test case."""

import json
import warnings

import numpy as np
import pytest

from napari_medseg import api, io
from napari_medseg.engine.discs import DiscsFlagged
from napari_medseg.engine import checkpoint as ckpt
from napari_medseg.engine import data as D
from napari_medseg.engine import preprocess as pp

BUNDLED = sorted(api.bundled_weights())


def test_models_json_lists_bundled(capsys):
    from napari_medseg.cli import main

    main(["models", "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in BUNDLED:
        assert rows[name]["weights"] is True and rows[name]["dataset"] and rows[name]["metrics"]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_on_a_real_test_case(name, shared):
    cfg = ckpt.read_config(api.bundled_weights()[name])
    card = cfg["card"]
    assert {"dataset", "test_metrics", "licence", "hardware", "train_wall_s"} <= set(card)
    layout = D.discover(shared / card["dataset"])
    stem = D.split(layout)["test"][0]
    img_path, tgt_path = layout.pairs[stem]
    if cfg["model"]["task"] == "keypoints":
        vol = io.read_nifti(img_path)
        with warnings.catch_warnings():  # its top disc may be flagged for review; accuracy is what is tested
            warnings.simplefilter("ignore", DiscsFlagged)
            pred = api.label_discs(vol, model=name, device="cpu")
        truth = D.disc_points(tgt_path, vol)
        _, geo = pp.sagittal_view(np.zeros(vol.data.shape, np.float32), vol.affine, 1)
        t = dict(zip(truth.numbers, pp.voxel_to_view(truth.voxels(), geo)))
        p = dict(zip(pred.numbers, pp.voxel_to_view(pred.voxels(), geo)))
        common = sorted(set(t) & set(p))
        assert len(common) >= len(t) // 2, (pred.numbers, truth.numbers)
        err = np.median([np.linalg.norm(np.asarray(p[n]) - np.asarray(t[n])) for n in common])
        assert err < 10.0, err  # mm (1 mm voxels); the model card has the full test-split numbers
    else:
        seg = api.segment(img_path, model=name, device="cpu")
        truth = D.read_mask(tgt_path) if layout.kind == "seg2d" else np.asarray(io.read_nifti(tgt_path).data)
        assert seg.labels.shape == truth.shape  # native resolution, file order
        dices = [_dice(seg.labels == k, truth == k) for k in range(1, int(truth.max()) + 1) if (truth == k).any()]
        # one case, not the test split (the model card has that): a sensible overlap on every class
        assert dices and min(dices) > 0.5, dices


def _dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


# ---------------------------------------------------------------- what each model expects (guard rails)


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_model_declares_its_input_and_accepts_its_own_test_split(name, shared):
    from napari_medseg.engine.infer import Predictor

    cfg = ckpt.read_config(api.bundled_weights()[name])
    assert cfg["expects"]["cases"] > 0 and cfg["card"]["expects"]
    pred = Predictor.from_checkpoint(api.bundled_weights()[name], device="cpu")
    layout = D.discover(shared / cfg["card"]["dataset"])
    for stem in D.split(layout)["test"]:
        assert pred.check_input(io.read(layout.pairs[stem][0])[0]) == [], stem


CROSS = [  # (model, input, what the refusal says)
    ("unet-kvasir-192", "acdc", "this is a 3-D volume"),  # the polyp model on a cardiac MRI
    ("lstmsa-acdc", "kvasir-seg", "this is a 2-D image"),  # the cardiac model on a colonoscopy image
    ("hourglass-spine-discs", "acdc", "field of view along S-I"),  # disc labeling on a cardiac MRI
    ("hourglass-spine-discs", "volumes/ct-abdomen-small.nii.gz", "this volume is CT"),  # ... on an abdominal CT
    ("lstmsa-acdc", "volumes/ct-spleen-crop.nii.gz", "this volume is CT"),
]


def _input(shared, what):
    if what.startswith("volumes/"):
        return shared / what
    layout = D.discover(shared / what)
    return layout.pairs[D.split(layout)["test"][0]][0]


@pytest.mark.parametrize("model,what,message", CROSS)
def test_wrong_kind_of_input_is_refused_unless_forced(model, what, message, shared):
    from napari_medseg.engine.expectations import InputMismatch

    path = _input(shared, what)
    run = api.label_discs if model.startswith("hourglass") else api.segment
    with pytest.raises(InputMismatch, match=message) as err:
        run(str(path), model=model, device="cpu")
    assert "--force" in str(err.value) and "\n" not in str(err.value)
    if model.startswith("hourglass"):  # forced onto a scan it was not made for: runs, and says to check it
        with pytest.warns(DiscsFlagged, match="no disc found|all discs \\(numbering not anchored"):
            run(str(path), model=model, device="cpu", force=True)
    else:
        run(str(path), model=model, device="cpu", force=True)  # the explicit override runs


def test_batch_lists_refused_inputs_writes_nothing_for_them_and_goes_on(shared, tmp_path):
    from napari_medseg.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    good = _input(shared, "kvasir-seg")
    (inputs / good.name).write_bytes(good.read_bytes())
    (inputs / "heart.nii.gz").write_bytes(_input(shared, "acdc").read_bytes())
    out = tmp_path / "out"
    summary = api.batch(str(inputs), str(out), model="unet-kvasir-192", device="cpu")
    assert [s["file"] for s in summary["skipped"]] == [str(inputs / "heart.nii.gz")]
    assert "refused" in summary["skipped"][0]["error"]
    assert sorted(p.name for p in out.iterdir()) == [f"{io.file_stem(good)}_seg.png", "manifest.csv"]
    assert main(["predict", "--model", "unet-kvasir-192", str(inputs), "--out", str(tmp_path / "forced"),
                 "--device", "cpu", "--force"]) == 0
    assert len(list((tmp_path / "forced").glob("*_seg.*"))) == 2


def test_models_table_is_readable_and_needs_no_torch():
    """`napari-medseg models` prints an aligned table with the task in words, the test metric and the size,
    and never imports torch (that is what keeps it fast); checked in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import sys; from napari_medseg.cli import main; rc = main(['models']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO-TORCH")
    for name in BUNDLED:
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert " MB" in line and ("Dice 0." in line or "median L2" in line), line
    assert "polyp segmentation, colonoscopy images" in out and "0.000000" not in out
