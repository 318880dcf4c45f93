"""Partial labels (engine/losses.py, engine/data.py ``read_contoured``): an organ that was not drawn for a
case is unknown there, not background. Its logits teach nothing, its Dice is not scored, and the real
head-and-neck CT data's ``contoured`` list is read as the files mean it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_medseg import io
from napari_medseg.engine import data as D
from napari_medseg.engine import preprocess as pp
from napari_medseg.engine.losses import SegmentationLoss, soft_dice
from napari_medseg.engine.metrics import segmentation_metrics
from napari_medseg.engine.train import TrainOptions, train

K = 4  # background + 3 organs


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, 8, 8, generator=g, dtype=torch.float64)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 1:4, 1:4] = 1
    target[:, 5:7, 5:7] = 3
    target[1, 1:3, 5:7] = 2  # organ 2 drawn only in sample 1
    present = torch.tensor([[True, True, False, True], [True, True, True, True]])
    return logits, target, present


@pytest.mark.parametrize("name", ["dice_ce", "ce"])
def test_an_organ_not_drawn_gets_no_gradient_while_a_drawn_one_does(name):
    logits, target, present = _batch()
    logits.requires_grad_(True)
    SegmentationLoss(name)(logits, target, present).backward()
    g = logits.grad
    assert float(g[0, 2].abs().max()) == 0.0  # not drawn in sample 0: exactly nothing
    assert float(g[0, 3].abs().min()) > 0 and float(g[0, 0].abs().min()) > 0  # drawn organs and background learn
    assert float(g[1, 2].abs().min()) > 0  # drawn in sample 1: it learns there
    # the same batch with the missing organ taken as background (the old way) pushes organ 2 down in sample 0
    plain = logits.detach().clone().requires_grad_(True)
    SegmentationLoss(name)(plain, target).backward()
    assert float(plain.grad[0, 2].abs().min()) > 0


@pytest.mark.parametrize("name", ["dice_ce", "ce"])
def test_an_undrawn_organ_may_claim_background_pixels_at_no_cost(name):
    """The loss does not change whatever sample 0 predicts for its undrawn organ; with every class present the
    partial loss is the plain loss."""
    logits, target, present = _batch()
    loss = SegmentationLoss(name)
    base = float(loss(logits, target, present))
    moved = logits.clone()
    moved[0, 2] = 50.0  # organ 2 everywhere in sample 0, background included
    assert float(loss(moved, target, present)) == base
    full = torch.ones_like(present)
    assert float(loss.partial_loss(logits, target, full)) == pytest.approx(float(loss.pixel_loss(logits, target)), abs=1e-12)
    assert float(loss(logits, target, full)) == float(loss(logits, target))  # all present: the plain loss


def test_partial_labels_refuse_what_they_cannot_mean():
    logits, target, present = _batch()
    bad = present.clone()
    bad[1, 2] = False  # sample 1 draws organ 2 but says it did not
    with pytest.raises(ValueError, match="does not list as drawn"):
        SegmentationLoss("dice_ce")(logits, target, bad)
    with pytest.raises(ValueError, match="binary"):
        SegmentationLoss("bce")(logits[:, :2], (target > 0).long(), present[:, :2] & torch.tensor([True, False]))
    with pytest.raises(ValueError, match="expected"):
        SegmentationLoss("ce")(logits, target, present[:, :3])


def test_dice_and_metrics_score_only_the_drawn_organs():
    logits, target, present = _batch()
    perfect = torch.nn.functional.one_hot(target, K).permute(0, 3, 1, 2).double() * 10
    perfect[0, 2, 0, 0] = 100.0  # sample 0 "finds" organ 2 where the file says background
    d_all, d_part = soft_dice(perfect, target), soft_dice(perfect, target, present)
    assert d_part[0] == 1.0 and d_all[0] < 1.0  # the undrawn organ is not scored
    assert d_part[1] == d_all[1] == 1.0
    pred = perfect[0].argmax(0).numpy()
    full = segmentation_metrics(pred, target[0].numpy(), K)
    part = segmentation_metrics(pred, target[0].numpy(), K, classes={1, 3})
    assert full["dice"][2] == 0.0 and 2 not in part["dice"] and 2 not in part["hd95"]
    assert part["dice_mean"] == 1.0 and full["dice_mean"] < 1.0


def _volume_folder(root, contoured):
    """A seg3d folder of three 32x32x4 volumes: organ 1 in all, organ 2 drawn in case b only."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for stem in ("a", "b", "c"):
        img = rng.normal(size=(32, 32, 4)).astype(np.float32)
        lab = np.zeros((32, 32, 4), np.uint8)
        lab[4:12, 4:12] = 1
        img[4:12, 4:12] += 3
        img[18:26, 18:26] += 3  # organ 2 is in every image
        if stem == "b":
            lab[18:26, 18:26] = 2
        io.write_nifti(root / "imagesTr" / f"{stem}.nii.gz", img, np.eye(4))
        io.write_nifti(root / "labelsTr" / f"{stem}.nii.gz", lab, np.eye(4), kind="labels")
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "one": 1, "two": 2},
                                                   "contoured": contoured}))
    (root / "split.json").write_text(json.dumps({"train": ["a", "b"], "val": ["c"], "test": ["c"]}))
    return root


def test_contoured_lists_are_read_as_objects_or_text_and_checked(tmp_path):
    root = _volume_folder(tmp_path / "d", "{'a': [1], 'b': [1, 2], 'c': [1]}")  # as headneck-ct stores it
    layout = D.discover(root)
    assert layout.contoured == {"a": [1], "b": [1, 2], "c": [1]}
    prep = D.prepare(layout, ["a", "b"], size=(16, 16), channels=1)
    assert prep.present.shape == (len(prep.images), 3)
    per_case = len(prep.images) // 2
    assert not prep.present[:per_case, 2].any() and prep.present[per_case:].all()
    for bad, msg in (({"zz": [1]}, "no image"), ({"a": [5]}, "classes are"), ("{'a': [1", "neither"),
                     ({"a": ["x"]}, "class numbers"), ([1, 2], "must map")):
        (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "one": 1, "two": 2},
                                                       "contoured": bad}))
        with pytest.raises(D.DataError, match=msg):
            D.discover(root)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "one": 1, "two": 2}}))
    assert D.discover(root).contoured is None and D.prepare(D.discover(root), ["a"], size=(16, 16), channels=1).present is None


def test_a_class_found_in_the_file_counts_as_drawn_even_if_not_listed(tmp_path):
    root = _volume_folder(tmp_path / "d", {"a": [1], "b": [1], "c": [1]})  # b draws organ 2 but lists only 1
    prep = D.prepare(D.discover(root), ["b"], size=(16, 16), channels=1)
    assert prep.present is None  # b's file draws both organs: nothing is partial


def test_training_with_partial_labels_runs_and_validates_on_drawn_organs(tmp_path, monkeypatch):
    """Real training steps: every batch of case a (organ 2 undrawn) goes through the partial loss, and the
    validation Dice of case c scores organ 1 only. The run also uses a fixed intensity window (as for CT in
    Hounsfield units), which its checkpoint records and inference replays."""
    root = _volume_folder(tmp_path / "d", {"a": [1], "b": [1, 2], "c": [1]})
    calls = []
    original = SegmentationLoss.partial_loss

    def spy(self, logits, target, present):
        calls.append(present.clone())
        return original(self, logits, target, present)

    monkeypatch.setattr(SegmentationLoss, "partial_loss", spy)
    out = train(TrainOptions(model="unet", data=str(root), out=str(tmp_path / "run"), epochs=1, batch_size=4,
                             input_size=32, seed=0, precision="fp32", max_steps_per_epoch=2, hu_window=(-1.0, 4.0)))
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert config["preprocessing"]["normalize"] == "window:-1:4"
    pre = pp.Preprocessing.from_config(config["preprocessing"])
    vol = io.read_nifti(root / "imagesTr" / "c.nii.gz")
    _, slices = pre.volume_slices(vol.data, vol.affine)
    raw = np.moveaxis(np.asarray(vol.data, np.float32), pre.axis_for(vol.affine, vol.data.shape), 0)
    np.testing.assert_allclose(slices, (np.clip(raw, -1, 4) + 1) / 5, rtol=0, atol=1e-6)
    assert out["epochs_done"] == 1 and np.isfinite(out["history"][0]["dice"])
    assert len(calls) >= 3  # two training steps and the validation pass
    assert any(not bool(p[:, 2].all()) for p in calls[:2])  # training batches hold samples without organ 2
    assert not bool(calls[-1][:, 2].any())  # validation case c: organ 2 never scored


def test_the_head_and_neck_ct_lists_its_undrawn_organs(shared):
    layout = D.discover(shared / "headneck-ct")
    assert layout.label_names[:3] == ["background", "Brainstem", "SpinalCord"]
    assert len(layout.contoured) == 200 and layout.contoured["hn_101"] == [1, 2, 3, 4, 7]
    missing = {c: sum(c not in v for v in layout.contoured.values()) for c in (5, 6, 7)}
    assert missing == {5: 130, 6: 104, 7: 65}  # esophagus 70 of 200, larynx 96, mandible 135 (its README)
    truth = np.asarray(io.read_nifti(layout.pairs["hn_101"][1], kind="labels").data)
    assert not np.isin(truth, [5, 6]).any()  # undrawn: nowhere in the file, though the organs are in the CT


def test_without_partial_labels_undrawn_organs_count_as_background(tmp_path, monkeypatch):
    """The ablation switch: ``partial_labels=False`` trains as if every undrawn organ were background (no
    sample goes through the partial loss)."""
    root = _volume_folder(tmp_path / "d", {"a": [1], "b": [1, 2], "c": [1]})
    calls = []
    monkeypatch.setattr(SegmentationLoss, "partial_loss", lambda self, *a: calls.append(1) or 0.0)
    out = train(TrainOptions(model="unet", data=str(root), out=str(tmp_path / "run"), epochs=1, batch_size=4,
                             input_size=32, seed=0, precision="fp32", max_steps_per_epoch=1, partial_labels=False))
    assert out["epochs_done"] == 1 and not calls


def test_an_intensity_window_is_written_once_and_checked(shared, tmp_path):
    assert pp.window_mode(-160, 240) == "window:-160:240" and pp.parse_window("window:-160:240") == (-160.0, 240.0)
    x = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0], np.float32)
    np.testing.assert_allclose(pp.normalize(x, "window:-160:240"), [0.0, 0.0, 0.5, 1.0, 1.0])
    for lo, hi in ((240, -160), (0, 0), (float("nan"), 1)):
        with pytest.raises(ValueError, match="low < high"):
            pp.window_mode(lo, hi)
    with pytest.raises(ValueError, match="window:LOW:HIGH"):
        pp.normalize(x, "window:-160")
    with pytest.raises(ValueError, match="for volumes"):
        train(TrainOptions(model="unet", data=str(shared / "kvasir-seg"), out=str(tmp_path / "run"), hu_window=(-160, 240)))
