"""Disc labeling over every labelled level: what "labelled" means in data, loss and metrics, the level
balancing, and numbering anchored at the lumbosacral junction (engine/discs.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg import io
from napari_medseg.engine import data as D
from napari_medseg.engine import preprocess as pp
from napari_medseg.engine.discs import (ANCHOR, NOT_ANCHORED, Numbering, anchor_numbering, apply_prior, decode_discs,
                                        flag_discs, level_steps, renumber_chain)
from napari_medseg.engine.losses import HeatmapLoss
from napari_medseg.engine.metrics import disc_metrics

NUMBERS = list(range(18, 26))  # T10/T11 ... L5/S1
SIZE = (128, 128)


def _heat(peaks: dict[int, list[tuple[float, float, float]]]) -> np.ndarray:
    """(K, H, W) heatmaps with Gaussian peaks (row, col, height) per SCT number."""
    maps = np.zeros((len(NUMBERS), *SIZE), np.float32)
    for n, ps in peaks.items():
        for r, c, h in ps:
            maps[NUMBERS.index(n)] = np.maximum(maps[NUMBERS.index(n)],
                                                h * pp.gaussian_heatmaps(np.array([[r, c]]), [True], SIZE, 2.2)[0])
    return maps


ROWS = [20.0, 38.0, 56.0, 74.0, 92.0, 108.0]  # six discs, T12/L1 ... L5/S1 (20 ... 25), head to feet


def test_level_steps_count_a_missed_disc_only_from_1_6_spacings():
    assert level_steps([[0], [30], [60], [90]]) == [1, 1, 1]
    assert level_steps([[0], [30], [60], [107], [137]]) == [1, 1, 1, 1]  # 47 mm: 1.57 spacings, one level
    assert level_steps([[0], [30], [60], [109], [139]]) == [1, 1, 2, 1]  # 49 mm: 1.63 spacings, a level missed
    assert level_steps([[0], [30], [60], [140], [170]]) == [1, 1, 3, 1]  # 80 mm: 2.7 spacings, two missed
    assert renumber_chain([[0], [30], [60], [109]], 3, 25) == [21, 22, 23, 25]
    assert renumber_chain([[0], [30]], 0, 20) == [20, 21]


def test_a_chain_the_heatmaps_named_one_level_off_is_anchored_at_l5_s1_and_says_so():
    # every channel fires one disc too low (T11/T12 on T12/L1 ...), as the old model did on other sites,
    # but the L5/S1 channel sits on the last disc: the anchor renumbers the chain from it
    heat = _heat({n: [(r, 60.0, 0.9)] for n, r in zip(range(19, 25), ROWS)} | {25: [(ROWS[-1], 60.0, 0.8)]})
    found = decode_discs(heat, NUMBERS, {})
    assert [f["number"] for f in found][:5] == [19, 20, 21, 22, 23]  # the heatmaps' own names: a level off
    out, note, count = anchor_numbering(found, heat, NUMBERS)
    assert [f["number"] for f in out] == [20, 21, 22, 23, 24, 25]
    np.testing.assert_allclose([f["row"] for f in out], ROWS, atol=0.5)
    assert note.startswith("numbering anchored at L5/S1 renamed") and "1 level(s) higher" in note
    assert count == "counted from L5/S1; it renamed 6 disc(s) the heatmaps had named 1 level(s) higher"
    # where the renaming is not itself a doubt (a checkpoint's choice): the same count, said, not flagged
    quiet = anchor_numbering(found, heat, NUMBERS, renamed_doubt=False)
    assert [f["number"] for f in quiet.discs] == [20, 21, 22, 23, 24, 25] and quiet.doubt == ""
    assert quiet.count == count
    # the same chain named right by the heatmaps: anchoring changes nothing and says nothing
    right = _heat({n: [(r, 60.0, 0.9)] for n, r in zip(range(20, 26), ROWS)})
    found = decode_discs(right, NUMBERS, {})
    out, note, count = anchor_numbering(found, right, NUMBERS)
    assert [f["number"] for f in out] == [20, 21, 22, 23, 24, 25] and note == "" and count == "counted from L5/S1"


def test_no_l5_s1_means_the_numbering_is_flagged_on_every_disc():
    heat = _heat({n: [(r, 60.0, 0.9)] for n, r in zip(range(20, 25), ROWS)})  # cut above the sacrum
    found = decode_discs(heat, NUMBERS, {})
    out, note, _ = anchor_numbering(found, heat, NUMBERS)
    assert note == NOT_ANCHORED and [f["number"] for f in out] == [20, 21, 22, 23, 24]
    vox = np.array([[f["row"], f["col"], 8.0] for f in out])
    pts = flag_discs(io.DiscPoints.from_voxels(vox, [f["number"] for f in out], np.eye(4),
                                               confidences=[f["confidence"] for f in out]), note)
    assert all(NOT_ANCHORED in f for f in pts.flags)
    assert pts.verdict == f"check: all discs ({NOT_ANCHORED})" and pts.levels == NOT_ANCHORED
    # a weak L5/S1 response (below the anchor confidence) does not anchor either
    weak = _heat({n: [(r, 60.0, 0.9)] for n, r in zip(range(20, 25), ROWS)} | {25: [(ROWS[-1], 60.0, 0.35)]})
    assert anchor_numbering(decode_discs(weak, NUMBERS, {}), weak, NUMBERS)[1] == NOT_ANCHORED


def test_the_anchor_joins_the_chain_and_discs_below_it_are_dropped():
    # L5/S1 found by its channel only (the chain stops at L4/L5), and a sacral 'disc' below it
    heat = _heat({n: [(r, 60.0, 0.9)] for n, r in zip(range(20, 25), ROWS)})
    found = decode_discs(heat, NUMBERS, {}) + [{"row": 126.0, "col": 58.0, "confidence": 0.6, "number": 25}]
    heat[NUMBERS.index(25)] = _heat({25: [(ROWS[-1], 60.0, 0.7)]})[NUMBERS.index(25)]
    out = anchor_numbering(found, heat, NUMBERS).discs
    assert [f["number"] for f in out] == [20, 21, 22, 23, 24, 25]
    assert out[-1]["row"] == pytest.approx(ROWS[-1], abs=0.5)


RULES = {"agree_min": 0.5, "edge_room": 0.5, "sure_anchor": 0.5}  # engine/discs.py DECODING's fixed policies


def test_l4_l5_and_l5_s1_on_one_disc_leave_the_levels_in_doubt():
    # both junction channels fire on the last disc (is it L4/L5 or L5/S1?); the count from the stronger holds
    # the names, and the doubt says why; the same chain with the two channels one disc apart: no doubt
    peaks = {n: [(r, 60.0, 0.9)] for n, r in zip(range(20, 24), ROWS[:4])}
    same = _heat(peaks | {24: [(ROWS[4], 60.0, 0.8)], 25: [(ROWS[4] + 1.0, 60.0, 0.7)]})
    res = anchor_numbering(decode_discs(same, NUMBERS, {}), same, NUMBERS, levels=(24, 25), rows_in_scan=128,
                           **RULES)
    assert res.doubt.startswith("the L4/L5 and L5/S1 heatmaps point at the same disc (0.80 and 0.70, 0.1 spacings")
    apart = _heat(peaks | {24: [(ROWS[4], 60.0, 0.8)], 25: [(ROWS[5], 60.0, 0.7)]})
    res = anchor_numbering(decode_discs(apart, NUMBERS, {}), apart, NUMBERS, levels=(24, 25), rows_in_scan=128,
                           **RULES)
    assert res.doubt == "" and [f["number"] for f in res.discs] == [20, 21, 22, 23, 24, 25]
    # L5/S1's peak above L4/L5's: as much a contradiction
    above = _heat(peaks | {24: [(ROWS[5], 60.0, 0.8)], 25: [(ROWS[4], 60.0, 0.7)]})
    res = anchor_numbering(decode_discs(above, NUMBERS, {}), above, NUMBERS, levels=(24, 25), rows_in_scan=128,
                           **RULES)
    assert "point at the same disc" in res.doubt
    # a junction channel below the decoder's lowest disc heat does not respond: no contradiction from it
    faint = _heat(peaks | {24: [(ROWS[4], 60.0, 0.8)], 25: [(ROWS[4], 60.0, 0.15)]})
    res = anchor_numbering(decode_discs(faint, NUMBERS, {}), faint, NUMBERS, levels=(24, 25), rows_in_scan=128,
                           **RULES)
    assert "same disc" not in res.doubt


def test_l5_s1_at_the_lower_edge_of_the_scan_and_a_weak_anchor_leave_the_levels_in_doubt():
    heat = _heat({n: [(r, 60.0, 0.9)] for n, r in zip(range(20, 26), ROWS)})
    spacing = 18.0  # ROWS' median gap
    for rows_in_scan, doubt in ((ROWS[-1] + 0.4 * spacing, True), (ROWS[-1] + 0.6 * spacing, False)):
        res = anchor_numbering(decode_discs(heat, NUMBERS, {}), heat, NUMBERS, rows_in_scan=int(rows_in_scan),
                               **RULES)
        assert [f["number"] for f in res.discs] == [20, 21, 22, 23, 24, 25]
        assert ("lies at the lower edge of the scan" in res.doubt) == doubt, (rows_in_scan, res.doubt)
    weak = _heat({n: [(r, 60.0, 0.9)] for n, r in zip(range(20, 25), ROWS)} | {25: [(ROWS[-1], 60.0, 0.4)]})
    res = anchor_numbering(decode_discs(weak, NUMBERS, {}), weak, NUMBERS, min_confidence=0.3, rows_in_scan=128,
                           **RULES)
    assert [f["number"] for f in res.discs] == [20, 21, 22, 23, 24, 25]  # it anchors (>= 0.3) ...
    assert res.doubt == "the count rests on a weak L5/S1 (0.400, below 0.50): check the levels"  # ... in doubt
    vox = np.array([[f["row"], f["col"], 8.0] for f in res.discs])
    pts = flag_discs(io.DiscPoints.from_voxels(vox, [f["number"] for f in res.discs], np.eye(4),
                                               confidences=[f["confidence"] for f in res.discs]), res.doubt)
    assert pts.levels == res.doubt and pts.verdict.startswith("check: all discs (the count rests on a weak L5/S1")
    # a person names a disc: the levels are no longer in doubt
    named = apply_prior(pts, [io.Disc(24, tuple(pts.discs[4].world))])
    assert named.levels == "" and named.count == "counted from L4/L5, named by a person"


def test_the_levels_doubt_and_the_count_survive_the_json_file(tmp_path):
    pts = io.DiscPoints.from_voxels(np.array([[10.0, 20, 8], [30, 22, 8], [50, 24, 8]]), [23, 24, 25], np.eye(4),
                                    confidences=[0.9, 0.9, 0.4])
    pts.count = "counted from L5/S1"
    flag_discs(pts, "the count rests on a weak L5/S1 (0.40, below 0.50): check the levels")
    back = io.read_points(io.write_points(tmp_path / "a_discs.json", pts))
    assert back.levels == pts.levels and back.count == "counted from L5/S1" and back.flags == pts.flags
    flag_discs(pts, "")
    back = io.read_points(io.write_points(tmp_path / "b_discs.json", pts))
    assert back.levels == "" and back.verdict == pts.verdict


def test_a_model_without_an_l5_s1_channel_is_left_as_decoded():
    numbers = list(range(19, 25))
    heat = _heat({n: [(r, 60.0, 0.9)] for n, r in zip(range(19, 25), ROWS)})[1:7]
    found = decode_discs(heat, numbers, {})
    assert anchor_numbering(found, heat, numbers) == Numbering(found, "", "")
    assert ANCHOR == io.disc_number("L5/S1")


def test_metrics_know_only_the_levels_a_case_labels():
    truth = {21: np.array([40.0, 60]), 22: np.array([75.0, 60]), 23: np.array([110.0, 60]), 24: np.array([145.0, 60])}
    # right names and an L5/S1 below the last labelled disc: L5/S1 is unknown there, not a false positive
    pred = {**{n: p + [1.0, 0.0] for n, p in truth.items()}, 25: np.array([178.0, 58])}
    m = disc_metrics(pred, truth, (1.0, 1.0))
    assert (m["fn"], m["fp"], m["unscored"], m["shift"]) == (0, 0, 1, 0)
    assert m["per_level"][21] == {"l2_mm": pytest.approx(1.0), "miss": False}
    # the same chain named one level low (each disc carries the next level's name): all missed, a shift of +1, and
    # the unlabelled L5/S1 name on the labelled L4/L5 disc is a false positive
    off = {n + 1: p for n, p in truth.items()}
    m = disc_metrics(off, truth, (1.0, 1.0))
    assert m["shift"] == 1 and m["fn"] == 4 and m["fp"] == 1 and m["unscored"] == 0
    assert m["per_level"][21] == {"l2_mm": None, "miss": True}


def test_level_repeats_draw_the_rare_levels_more_often():
    vis = np.zeros((41, 8), bool)
    vis[:, 3:7] = True  # L1/L2 ... L4/L5 in every case
    vis[28:, 1:3] = True  # T11/T12, T12/L1 in 13 cases
    vis[35:, 7] = True  # L5/S1 in 6
    vis[37:, 0] = True  # T10/T11 in 4
    reps = D.level_repeats(vis)
    assert reps[:28].tolist() == [1] * 28
    assert reps[28:35].tolist() == [2] * 7  # sqrt(41 / 13) = 1.8
    assert reps[35:].tolist() == [3] * 6  # sqrt(41 / 6) = 2.6 and sqrt(41 / 4) = 3.2
    assert D.level_repeats(vis, max_repeat=2)[35:].tolist() == [2] * 6
    ds = D.DiscSamples(_tiny_discs(), augment=False, repeats=[1, 3])
    assert len(ds) == 4 and [ds[j]["index"] for j in range(4)] == [0, 1, 1, 1]
    with pytest.raises(ValueError, match="count >= 1"):
        D.DiscSamples(_tiny_discs(), repeats=[1, 0])


def _tiny_discs() -> D.Prepared:
    rng = np.random.default_rng(0)
    views = rng.random((2, len(D.VIEW_CHOICES), *SIZE), dtype=np.float32)
    vis = np.array([[False] * 3 + [True] * 4 + [False], [False] + [True] * 7])
    pos = np.array([[10.0 + 14 * k, 60.0] for k in range(8)])
    heat = np.stack([pp.gaussian_heatmaps(pos, v, SIZE, 2.2) for v in vis])
    return D.Prepared("keypoints", np.repeat(views[:, :1], 3, 1), heat, vis, ["a_1", "b_1"], 8, views=views)


def test_keypoint_augmentation_is_reproducible_keeps_the_input_range_and_moves_targets_with_the_image():
    data = _tiny_discs()
    ds = D.DiscSamples(data, augment=True, seed=3)
    draws = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        draws.append([ds[j] for j in range(2)])
    ds.set_epoch(4)  # an epoch redone (a resumed run) draws the same numbers in the same order
    again = [ds[j] for j in range(2)][1]
    assert torch.equal(again["image"], draws[4][1]["image"]) and torch.equal(again["target"], draws[4][1]["target"])
    for items in draws:
        for it in items:
            assert it["image"].shape == (3, *SIZE) and torch.equal(it["image"][0], it["image"][2])
            # [0, 1], then scaled by 1 +- 0.1 and shifted by +- 0.1: within [-0.1, 1.21]
            assert -0.1 - 1e-6 <= float(it["image"].min()) and float(it["image"].max()) <= 1.21 + 1e-6
            # a level the case does not label keeps a zero target whatever the augmentation does
            assert float(it["target"][~data.visible[it["index"]]].abs().max()) == 0.0
    # the augmentation changes the image and the target together (rotation / scale move the peaks)
    moved = [it for items in draws for it in items if not torch.equal(it["target"], torch.as_tensor(data.targets[it["index"]]))]
    assert moved
    # without augmentation: the inference view, the target unchanged
    plain = D.DiscSamples(data, augment=False)[0]
    np.testing.assert_array_equal(plain["image"].numpy(), data.images[0])
    np.testing.assert_array_equal(plain["target"].numpy(), data.targets[0])


def test_an_unlabelled_level_teaches_nothing():
    """The loss ignores a channel the case does not label: whatever the network predicts for the unlabelled
    L5/S1 of a vb3-like case, neither the loss nor its gradient changes."""
    data = _tiny_discs()
    target = torch.as_tensor(data.targets[:1])
    visible = torch.as_tensor(data.visible[:1])
    pred = torch.rand(1, 2, 8, *SIZE, requires_grad=True)
    loss = HeatmapLoss()({"stack_heatmaps": pred}, target, visible)
    loss.backward()
    assert float(pred.grad[0, :, 7].abs().max()) == 0.0 and float(pred.grad[0, :, 0].abs().max()) == 0.0
    assert float(pred.grad[0, :, 4].abs().max()) > 0
    other = pred.detach().clone()
    other[0, :, 7] = 1.0  # a confident L5/S1 where the case labels none
    assert float(HeatmapLoss()({"stack_heatmaps": other}, target, visible)) == pytest.approx(float(loss.detach()))


def test_prepared_spine_discs_mark_only_labelled_levels(shared):
    layout = D.discover(shared / "spine-discs")
    stems = ["spine_vb3_01", "spine_vb2_02", "spine_vb1_06", "spine_vb1_15"]
    prep = D.prepare(layout, stems, size=SIZE, channels=3)
    assert prep.preprocessing["disc_numbers"] == NUMBERS
    l5s1 = NUMBERS.index(25)
    assert prep.visible[:, l5s1].tolist() == [False, False, True, True]
    assert prep.visible[0].tolist() == [False, False, False, True, True, True, True, False]  # vb3: L1/L2 ... L4/L5
    assert float(prep.targets[0, l5s1].max()) == 0.0 and float(prep.targets[2, l5s1].max()) == pytest.approx(1.0, abs=0.05)
    # the prior of L5/S1 comes from the two cases that label it, nothing else
    truth = [D.disc_points(layout.pairs[s][1], io.read_nifti(layout.pairs[s][0])) for s in stems[2:]]
    rows = []
    for s, pts in zip(stems[2:], truth):
        vol = io.read_nifti(layout.pairs[s][0])
        view, geo = pp.sagittal_view(vol.data, vol.affine, 7)
        rc = pp.voxel_to_view(pts.voxels()[[pts.numbers.index(25)]], geo)[0]
        scale = SIZE[0] / view.shape[0]
        rows.append(rc[0] * scale + (scale - 1) / 2)
    assert prep.preprocessing["prior"]["25"]["row"] == pytest.approx(float(np.mean(rows)))
    # the slice-choice views: one per VIEW_CHOICES (the first is the inference view), then the depth sweep
    assert prep.views.shape == (4, len(D.VIEW_CHOICES) + 17, *SIZE)
    np.testing.assert_allclose(prep.views[:, 0], prep.images[:, 0], atol=1e-6)


# ---------------------------------------------------------------- the bundled model on scans it must not number silently


def _bundled_discs(vol):
    import warnings

    from napari_medseg import api
    from napari_medseg.engine.discs import DiscsFlagged

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiscsFlagged)
        return api.label_discs(vol, model="hourglass-spine-discs", device="cpu")


def _named_right(pts, truth) -> bool:
    """Every reference disc has a prediction of its name within 10 mm (3-D)."""
    return all(n in pts.names and np.linalg.norm(pts.world[pts.names.index(n)] - truth.world[k]) < 10.0
               for k, n in enumerate(truth.names))


def _no_level_off(pts, truth) -> bool:
    """Every disc named with a reference name lies within 10 mm (3-D) of the reference disc of that name, and
    at least five do: no disc carries its neighbour's name (a missed disc is not a wrong name)."""
    hits = [np.linalg.norm(pts.world[i] - truth.world[truth.names.index(n)]) < 10.0
            for i, n in enumerate(pts.names) if n in truth.names]
    return len(hits) >= 5 and all(hits)


def test_the_bundled_model_never_numbers_the_multisite_test_scan_wrong_silently(shared):
    """The patient-wise split's multi-site test scan (T11/T12 ... L5/S1): every name it gives on its disc, or
    every disc flagged for a person to check the levels."""
    vol = io.read_nifti(shared / "spine-discs/images/spine_vb1_16.nii.gz")
    truth = io.read_points(shared / "spine-discs/labels/spine_vb1_16_labels-disc.nii.gz")
    pts = _bundled_discs(vol)
    assert len(pts) >= 5
    assert _no_level_off(pts, truth) or pts.verdict.startswith("check: all discs"), pts.verdict


@pytest.mark.xfail(strict=True, reason="issue 34 open: the bundled model (square crops) counts this scan from L4/L5 one "
                                       "level high and flags it; docs/results.md, Disc labeling")
def test_the_bundled_model_names_every_level_of_the_multisite_test_scan(shared):
    vol = io.read_nifti(shared / "spine-discs/images/spine_vb1_16.nii.gz")
    truth = io.read_points(shared / "spine-discs/labels/spine_vb1_16_labels-disc.nii.gz")
    assert _named_right(_bundled_discs(vol), truth)


def test_a_scan_cut_above_l5_is_flagged_not_silently_numbered(shared):
    vol = io.read_nifti(shared / "spine-discs/images/spine_vb1_16.nii.gz")
    truth = io.read_points(shared / "spine-discs/labels/spine_vb1_16_labels-disc.nii.gz")
    row = (np.linalg.inv(vol.affine) @ np.r_[truth.world[truth.names.index("L4/L5")], 1.0])[0]  # axis 0: head to feet
    cut = io.Volume(vol.data[: int(row) - 8], vol.affine, name="cut above L5")
    pts = _bundled_discs(cut)
    assert pts.discs and all(NOT_ANCHORED in d.flag for d in pts.discs)
    assert pts.verdict.startswith("check: all discs (numbering not anchored")


@pytest.mark.parametrize("top, square", [
    (0.40, False),
    (0.35, True)])
def test_a_scan_that_shows_more_sacrum_is_not_named_from_s1_s2_silently(shared, top, square):
    """The multi-site test scan without its top (starting at L1/L2 or lower) and, in the second case, cut to
    a magnified square around the spine: S1 and S2 take a larger part of the view, as on scans of another
    protocol. L5/S1 must be named on the L5/S1 disc, or the scan must be flagged: never the S1/S2 junction
    (about one vertebra lower) silently."""
    from napari_medseg.engine.evaluate import crop_field_of_view

    vol = io.read_nifti(shared / "spine-discs/images/spine_vb1_16.nii.gz")
    truth = io.read_points(shared / "spine-discs/labels/spine_vb1_16_labels-disc.nii.gz")
    crop, kept = crop_field_of_view(vol, truth, top, square)
    assert "L5/S1" in kept.names and len(kept) < len(truth)  # the top discs are gone
    pts = _bundled_discs(crop)
    if _named_right(pts, kept):
        return  # every disc in view named right
    assert pts.verdict.startswith("check: all discs"), pts.verdict


def test_an_axial_lumbar_stack_is_refused(shared):
    from napari_medseg import api
    from napari_medseg.engine.expectations import InputMismatch

    vol = io.read_nifti(shared / "spine-discs/images/spine_vb1_16.nii.gz")
    axial = io.Volume(np.ascontiguousarray(vol.data[150:198:4]), vol.affine @ np.diag([4.0, 1, 1, 1]), name="axial")
    with pytest.raises(InputMismatch, match="field of view along S-I is 48 mm"):
        api.label_discs(axial, model="hourglass-spine-discs", device="cpu")


def test_a_whole_spine_or_cervical_scan_is_flagged(shared):
    """The PAM50 spine template (C1 ... T12, no sacrum), padded front to back to a lumbar field of view so
    that the input check lets it through: whatever the model finds is flagged as not anchored."""
    pam = io.read_nifti(shared / "volumes/pam50-small-t2.nii.gz")  # LAS, 70 x 70 x 275 mm
    data = np.zeros((70, 300, 275), np.float32)
    data[:, 115:185] = pam.data
    affine = pam.affine.copy()
    affine[:3, 3] -= affine[:3, 1] * 115
    for name, start in (("whole spine", 0), ("cervical", 25)):  # from voxel 25 on: the top 250 mm, C1 ... T4
        shift = np.eye(4)
        shift[2, 3] = start
        pts = _bundled_discs(io.Volume(np.ascontiguousarray(data[:, :, start:]), affine @ shift, name=name))
        assert pts.verdict.startswith("check:"), name
        assert all(NOT_ANCHORED in d.flag for d in pts.discs), (name, pts.flags)


def test_fine_tuning_a_disc_model_onto_more_levels_keeps_the_levels_it_knows(tmp_path):
    from napari_medseg import models
    from napari_medseg.engine import checkpoint as ckpt

    torch.manual_seed(0)
    old = models.build("hourglass", "small", in_channels=3, num_classes=6)
    cfg = {"model": {"name": "hourglass", "size": "small", "in_channels": 3, "num_classes": 6, "options": {},
                     "task": "keypoints"}, "preprocessing": {"disc_numbers": list(range(19, 25))}}
    ckpt.save_checkpoint(tmp_path / "old", old, cfg)
    new = models.build("hourglass", "small", in_channels=3, num_classes=8)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    info = ckpt.init_from(new, str(tmp_path / "old"), network="hourglass", size="small", in_channels=3,
                          numbers=NUMBERS)
    assert info["levels_before"] == list(range(19, 25)) and info["reinitialised"] == []
    assert set(info["mapped_by_level"]) == {k for k, v in fresh.items() if old.state_dict()[k].shape != v.shape}
    got, before = new.state_dict(), old.state_dict()
    for key in info["mapped_by_level"]:
        axis = 0 if key.startswith("score.") else 1  # score: level = output channel; score_back: input channel
        for j, n in enumerate(NUMBERS):
            slot = got[key].narrow(axis, j, 1)
            if n in range(19, 25):
                assert torch.equal(slot, before[key].narrow(axis, n - 19, 1)), (key, n)
            elif axis == 0:
                assert torch.equal(slot, fresh[key].narrow(axis, j, 1)), (key, n)  # a new level: fresh
            else:
                assert float(slot.abs().max()) == 0.0  # a new level feeds nothing back at first


def test_the_summary_tells_a_doubt_about_the_levels_from_a_flag_on_one_disc():
    from napari_medseg.engine.evaluate import _disc_summary

    def case(shift, verdict, levels):
        return {"l2_all_mm": [1.0], "l2_3d_all_mm": [1.0], "n_true": 1, "fn": 0, "fp": 0, "shift": shift,
                "verdict": verdict, "levels": levels, "predicted": []}

    cases = [case(-1, "check: all discs (the count rests on a weak L4/L5)", "the count rests on a weak L4/L5"),
             case(1, "check: L3/L4 (low confidence 0.25)", "ok"),  # flagged, but silent about its levels
             case(0, "check: all discs (two places look like L5/S1)", "two places look like L5/S1"),
             case(0, "check: L2/L3 (low confidence 0.28)", "ok"), case(0, "ok", "ok")]
    m = _disc_summary(cases)
    assert (m["off_by_levels"], m["flagged"], m["silent_shifts"]) == (2, 4, 0)
    assert m["flag_precision"] == 0.5 and m["flag_recall"] == 1.0
    assert (m["levels_flagged"], m["silent_level_shifts"]) == (2, 1)
    assert m["levels_flag_precision"] == 0.5 and m["levels_flag_recall"] == 0.5
