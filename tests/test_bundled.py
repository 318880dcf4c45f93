"""Every bundled model loads in a fresh install and gives a sensible result on one real test case."""

import json

import numpy as np
import pytest

from napari_medseg import api, io
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
