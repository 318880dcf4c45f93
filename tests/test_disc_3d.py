"""Disc targets beyond one heatmap per labelled disc (engine/disc_targets.py): the known-empty part of an
unlabelled level's channel, field-of-view crops, depth channels, and discs placed in 3-D in every output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg import io
from napari_medseg.engine import data as D
from napari_medseg.engine import disc_targets as DT
from napari_medseg.engine import preprocess as pp
from napari_medseg.engine import tasks
from napari_medseg.engine.infer import Predictor
from napari_medseg.engine.losses import HeatmapLoss

NUMBERS = list(range(18, 26))  # T10/T11 ... L5/S1
SIZE = (128, 128)


def test_an_unlabelled_l5_s1_is_unknown_only_where_its_disc_can_be():
    """A vb2-like case labels T11/T12 ... L4/L5 and has the L5 body below L4/L5: the L5/S1 channel is left
    out of the loss on a disc around the L4/L5 disc reflected through the L5 body, and counts (as empty)
    everywhere else: on the sacrum below and on the labelled discs above."""
    rows = [20.0, 34.0, 48.0, 62.0, 76.0, 90.0]  # 19 ... 24, 14 px apart
    labelled = {n: (r, 60.0) for n, r in zip(range(19, 25), rows)}
    bodies = np.array([[r + 7.0, 60.0] for r in [6.0] + rows])  # a body between each pair, L5 at 97
    known = DT.known_masks(NUMBERS, labelled, bodies, SIZE)
    l5s1, t10 = known[NUMBERS.index(25)], known[NUMBERS.index(18)]
    assert known[NUMBERS.index(22)].all()  # a labelled level counts everywhere
    assert l5s1[104, 60] == 0  # 2 x 97 - 90: where L5/S1 is expected
    assert l5s1[104 + int(DT.BAND * 14) + 1, 60] == 1  # just past the band: S1, known empty
    assert l5s1[118, 60] == 1 and l5s1[90, 60] == 1  # the sacrum below, the L4/L5 disc above
    assert t10[6, 60] == 0 and t10[34, 60] == 1  # T10/T11 above T11/T12 (body at 13: 2 x 13 - 20 = 6)
    # the loss: an unlabelled level teaches where its disc cannot be, and nothing where it can
    target = torch.zeros(1, len(NUMBERS), *SIZE)
    pred = torch.rand(1, 2, len(NUMBERS), *SIZE, requires_grad=True)
    HeatmapLoss()({"stack_heatmaps": pred}, target, torch.as_tensor(known[None])).backward()
    g = pred.grad[0, :, NUMBERS.index(25)]
    assert float(g[:, 104, 60].abs().max()) == 0.0 and float(g[:, 118, 60].abs().min()) > 0


def test_known_masks_of_a_case_without_labels_or_bodies():
    assert not DT.known_masks(NUMBERS, {}, np.zeros((0, 2)), SIZE).any()
    labelled = {21: (40.0, 60.0), 22: (56.0, 60.0), 23: (72.0, 60.0), 24: (88.0, 60.0)}  # vb3-like, no mask
    known = DT.known_masks(NUMBERS, labelled, np.zeros((0, 2)), SIZE)
    l5s1, t11 = known[NUMBERS.index(25)], known[NUMBERS.index(19)]
    assert l5s1[104, 60] == 0 and l5s1[120, 60] == 1  # one spacing on along the chain
    assert t11[8, 60] == 0 and t11[0, 60] == 0 and t11[40, 60] == 1  # two levels up: everything above unknown


def test_a_field_of_view_crop_moves_targets_and_known_pixels_with_the_image():
    img = np.zeros((1, *SIZE), np.float32)
    img[0, 100:104, 58:62] = 1.0  # a bright "disc" at row 100
    tgt = pp.gaussian_heatmaps(np.array([[101.5, 59.5], [10.0, 59.5]]), [True, True], SIZE, 2.0)
    known = np.ones_like(tgt)
    known[0, 0:5] = 0
    seen = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        out_img, out_tgt, out_known = DT.fov_crop(rng, img, tgt, known)
        if out_img is img:
            continue  # not cropped this time
        if out_img[0].max() == 0 or int(np.argmax(out_img[0].max(1))) == 100:  # the bottom cut (the scan ends)
            gone = out_img[0].max() == 0
            assert float(out_tgt[0].max()) == 0.0 if gone else np.array_equal(out_tgt[0][:100], tgt[0][:100])
            assert np.array_equal(out_tgt[1], tgt[1]) and out_known[0, 5:].all()
            seen.add("bottom")
            continue
        r_img = int(np.argmax(out_img[0].max(1)))
        assert r_img in range(100 - 58, 100)  # moved up by 10-45 % of the view
        shift = 100 - r_img
        assert int(np.argmax(out_tgt[0].max(1))) == 101 - shift  # the heatmap moved with it
        assert out_known[0, 0:5 - shift].sum() == 0 if shift < 5 else out_known[0, :10].all()
        if shift > 10:  # the top disc left the view: its channel is empty, and known to be
            assert float(out_tgt[1].max()) == 0.0 and out_known[1].all()
        assert (out_img[0, SIZE[0] - shift:] == 0).all()  # the scan's end: its darkest value
        seen.add("top")
    assert seen == {"top", "bottom"}


def test_a_magnified_square_keeps_discs_where_the_image_puts_them():
    """The square crop (top cut, front and back cut around the spine, resized to the view): the image's
    bright disc and its target peak land on the same pixel, magnified about the crop; known pixels follow;
    only with a share > 0 does fov_crop ever make one."""
    img = np.zeros((1, *SIZE), np.float32)
    img[0, 99:104, 69:74] = 1.0  # a bright "disc" centred at (101, 71)
    tgt = pp.gaussian_heatmaps(np.array([[101.0, 71.0], [40.0, 64.0]]), [True, True], SIZE, 2.0)
    known = np.ones_like(tgt)
    known[1, :, :20] = 0
    for seed in range(5):
        out_img, out_tgt, out_known = DT.square_crop(np.random.default_rng(seed), img, tgt, known)
        r, c = np.argwhere(out_img[0] > 0.5).mean(0)  # the centre of the magnified bright block
        rt, ct = np.unravel_index(int(np.argmax(out_tgt[0])), SIZE)
        assert abs(r - rt) <= 1.0 and abs(c - ct) <= 1.0
        a = int(round(np.random.default_rng(seed).uniform(*DT.SQUARE_CUT) * SIZE[0]))  # the draw square_crop made
        side = SIZE[0] - a
        c0 = int(np.clip(round((71 + 64) / 2 - side / 2), 0, SIZE[1] - side))  # around the discs' mean column
        k = SIZE[0] / side
        assert abs(rt - ((101 + 0.5 - a) * k - 0.5)) <= 1.0 and abs(ct - ((71 + 0.5 - c0) * k - 0.5)) <= 1.0
        assert out_img.shape == img.shape and out_known.dtype == known.dtype and set(np.unique(out_known)) <= {0, 1}
    plain = {id(DT.fov_crop(np.random.default_rng(s), img, tgt, known)[0]) for s in range(30)}
    squares = [DT.fov_crop(np.random.default_rng(s), img, tgt, known, square_share=1.0)[0] for s in range(30)]
    cropped = [x for x in squares if x is not img]
    assert cropped and all((x[0] > 0.5).sum(0).max() > 4 for x in cropped)  # all magnified: the 4-row disc grew
    assert id(img) in plain  # without a share the old crops (or none) only


def test_depth_peaks_refine_between_views_and_keep_the_middle_without_a_response():
    centres = np.arange(17, dtype=float)
    heat = np.zeros((17, 2, 8, 8), np.float32)
    for v, c in enumerate(centres):
        heat[v, 0, 4, 4] = np.exp(-((c - 5.3) ** 2) / (2 * 2.0**2))  # the depth channel's profile, peak at 5.3
        heat[v, 1, 4, 4] = 0.05  # below DEPTH_MIN: no estimate
    out = DT.depth_peaks(heat, centres, [4.0, 4.0], [4.0, 4.0], [0, 1])
    assert abs(out[0] - 5.3) < 0.1 and abs(5.0 - 5.3) > 0.25  # the parabola does what the arg-max cannot
    assert np.isnan(out[1])
    edge = DT.depth_peaks(heat[:4], centres[:4], [4.0], [4.0], [0])  # the peak beyond the sweep: its end
    assert edge[0] == 3.0


def test_prepared_discs_carry_depth_views_and_known_pixels(shared):
    layout = D.discover(shared / "spine-discs")
    prep = D.prepare(layout, ["spine_vb2_02", "spine_vb1_06"], size=SIZE, channels=3)
    k = len(NUMBERS)
    assert prep.num_classes == 2 * k and prep.targets.shape == (2, 2 * k, *SIZE)
    assert prep.preprocessing["depth"]["sigma_mm"] == DT.DEPTH_SIGMA_MM
    assert prep.views.shape[1] == len(D.VIEW_CHOICES) + 17 and prep.depth.shape == (2, prep.views.shape[1], k)
    vol = io.read_nifti(layout.pairs["spine_vb1_06"][0])
    truth = D.disc_points(layout.pairs["spine_vb1_06"][1], vol)
    lr = truth.voxels()[:, 2]  # the slice each reference disc sits on (1 mm slices)
    sweep = np.array(DT.sweep_offsets(17, 1.0)) + 8  # the sweep views' middle slices
    for j, n in enumerate(truth.numbers):  # each disc's depth target peaks on the sweep view through it
        amp = prep.depth[1, len(D.VIEW_CHOICES):, NUMBERS.index(n)]
        assert sweep[int(np.argmax(amp))] == pytest.approx(lr[j], abs=1.0)
    assert prep.depth[0, :, NUMBERS.index(25)].max() == 0.0  # vb2 does not label L5/S1
    assert (prep.known[0, NUMBERS.index(25)] == 0).any() and prep.known[0, NUMBERS.index(25)].mean() > 0.9


def _lordotic_case(turn_deg: float, start=(30.0, 50.0), step=16.0, n_labelled=6, bend=0.0):
    """A synthetic chain of discs 19 ... (18 + n_labelled) going down (rows) and backwards (cols) by ``bend``
    degrees per level, a body centre half way between neighbours, and one disc more below, turned by
    ``turn_deg`` at the last body (as L5/S1 at L5) and 0.9 times as far from it."""
    discs, bodies, d = [np.array(start)], [], np.array([1.0, 0.0]) * step
    for _ in range(n_labelled - 1):
        a = np.radians(bend)
        d = np.array([np.cos(a) * d[0] - np.sin(a) * d[1], np.sin(a) * d[0] + np.cos(a) * d[1]])
        discs.append(discs[-1] + d)
    for a, b in zip(discs[:-1], discs[1:]):
        bodies.append((a + b) / 2)
    half = (discs[-1] - discs[-2]) / 2
    last_body = discs[-1] + half
    t = np.radians(turn_deg)
    nxt = last_body + 0.9 * np.array([np.cos(t) * half[0] - np.sin(t) * half[1], np.sin(t) * half[0] + np.cos(t) * half[1]])
    levels = list(range(19, 19 + n_labelled))
    return {n: tuple(p) for n, p in zip(levels, discs)}, np.array(bodies + [last_body]), tuple(nxt)


def test_the_disc_below_the_chain_is_placed_as_the_cases_that_label_it_show():
    """Cases that label L5/S1 turn the chain by 30-40 degrees at L5: the fit learns the mean turn and
    length ratio, its leave-one-out error is the spread of the turns, and a case that stops at L4/L5 gets
    its L5/S1 from its own L4/L5 disc and L5 body (on anisotropic pixels too: the fit is in mm)."""
    full = [_lordotic_case(t, bend=b) for t, b in [(30.0, 2.0), (35.0, 4.0), (40.0, 6.0), (35.0, 0.0)]]
    cases = [({**lab, 25: nxt}, bodies, (1.0, 1.0)) for lab, bodies, nxt in full]
    fit = DT.fit_next_disc(cases, 25)
    assert fit["level"] == 25 and fit["cases"] == 4
    assert fit["turn_deg"] == pytest.approx(35.0, abs=1e-6) and fit["ratio"] == pytest.approx(0.9, abs=1e-9)
    assert 0.1 < fit["loo_mm"][0] < 1.0  # 30 and 40 are 5 degrees off the mean of the others
    lab, bodies, truth = _lordotic_case(35.0, bend=3.0)
    assert DT.extrapolate_next(fit, lab, bodies, (1.0, 1.0)) == pytest.approx(truth, abs=1e-6)
    # the same anatomy on pixels of 0.5 mm (rows) x 1 mm (cols): twice the rows
    px = np.array([0.5, 1.0])
    lab_px = {n: tuple(np.array(p) / px) for n, p in lab.items()}
    assert DT.extrapolate_next(fit, lab_px, bodies / px, px) == pytest.approx(np.array(truth) / px, abs=1e-6)
    # fewer than three cases that label both: no fit; no disc above or no body under it: nothing placed
    assert DT.fit_next_disc(cases[:2], 25) is None
    assert DT.extrapolate_next(fit, {n: p for n, p in lab.items() if n != 24}, bodies, (1.0, 1.0)) is None
    assert DT.extrapolate_next(fit, lab, bodies[:-1], (1.0, 1.0)) is None  # the mask lacks L5
    far = np.vstack([bodies[:-1], bodies[-1:] + [40.0, 0.0]])  # the next body is another vertebra further down
    assert DT.extrapolate_next(fit, lab, far, (1.0, 1.0)) is None


def test_prepared_spine_discs_get_an_extrapolated_l5_s1_that_is_never_a_label(shared):
    """With ``extrapolate``, a case that stops at L4/L5 gets an L5/S1 target on the disc below its L5 body,
    not counted as labelled; the fit comes from the cases that label L5/S1 and is recorded; without it,
    nothing changes."""
    layout = D.discover(shared / "spine-discs")
    stems = ["spine_vb1_06", "spine_vb1_10", "spine_vb1_15", "spine_vb2_02", "spine_vb3_01"]
    plain = D.prepare(layout, stems, size=SIZE, channels=3, disc_depth=False)
    prep = D.prepare(layout, stems, size=SIZE, channels=3, disc_depth=False, disc_extrapolate=True)
    k = NUMBERS.index(25)
    assert "extrapolated" not in plain.preprocessing
    (fit,) = prep.preprocessing["extrapolated"]
    assert fit["level"] == 25 and fit["cases"] == 3 and 20 < fit["turn_deg"] < 55
    assert np.array_equal(prep.visible, plain.visible) and not prep.visible[3:, k].any()
    assert prep.preprocessing["prior"] == plain.preprocessing["prior"]
    np.testing.assert_array_equal(prep.targets[:3], plain.targets[:3])  # cases that label it keep their truth
    for i in (3, 4):
        assert plain.targets[i, k].max() == 0 and prep.targets[i, k].max() > 0.9
        assert prep.known[i, k].all()  # the placed disc is a target everywhere in its channel
        r, c = np.unravel_index(int(np.argmax(prep.targets[i, k])), SIZE)
        l45, l34 = (np.unravel_index(int(np.argmax(prep.targets[i, NUMBERS.index(n)])), SIZE) for n in (24, 23))
        assert 0.6 < (r - l45[0]) / (l45[0] - l34[0]) < 1.3  # about one level below L4/L5
        # on the disc the known mask of the plain preparation left open for it
        assert plain.known[i, k, r, c] == 0
        np.testing.assert_array_equal(np.delete(prep.targets[i], k, 0), np.delete(plain.targets[i], k, 0))


# ---------------------------------------------------------------- a synthetic spine with discs off the midline


class BrightRows(torch.nn.Module):
    """A stand-in disc network: channel ``k`` (and its depth channel) is the input's brightness within the
    band of rows of level ``k``, so heatmaps peak where the bright discs are, strongest on the view that
    passes through a disc."""

    def __init__(self, bands):
        super().__init__()
        mask = torch.zeros(len(bands), *SIZE)
        for k, (lo, hi) in enumerate(bands):
            mask[k, lo:hi] = 1.0
        self.register_buffer("mask", torch.cat([mask, mask]))

    def forward(self, x):
        return x[:, :1] * self.mask[None]


DISC_ROWS = [16 + 14 * k for k in range(len(NUMBERS))]
DISC_LR = [3, 4, 6, 8, 10, 12, 13, 11]  # slices of 17: a curve, off the middle slice (8) for most
AP_COL = 64


def _synthetic_spine():
    """(volume, reference discs): 128 (I) x 128 (P) x 17 (R) at 1 mm, a bright blob per disc."""
    ii, jj, kk = np.mgrid[0:128, 0:128, 0:17].astype(np.float32)
    data = np.zeros((128, 128, 17), np.float32)
    for r, lr in zip(DISC_ROWS, DISC_LR):
        data += np.exp(-((ii - r) ** 2 / 8 + (jj - AP_COL) ** 2 / 18 + (kk - lr) ** 2 / 18))
    data[125:, :20] = 1.0  # a bright rod through every slice, below the discs: every view's brightest part,
    # so the view normalisation (min-max) scales every sagittal view alike
    affine = np.array([[0, 0, 1, -8], [0, -1, 0, 60], [-1, 0, 0, 100], [0, 0, 0, 1]], float)  # I, P, R
    vol = io.Volume(data * 1000.0, affine, name="synthetic spine")
    truth = io.DiscPoints.from_voxels([[r, AP_COL, lr] for r, lr in zip(DISC_ROWS, DISC_LR)], NUMBERS, affine,
                                      data.shape)
    return vol, truth


def _predictor():
    bands = [(r - 6, r + 7) for r in DISC_ROWS]
    config = {"model": {"name": "hourglass", "size": "small", "in_channels": 3, "num_classes": 2 * len(NUMBERS),
                        "task": "keypoints"},
              "preprocessing": {"input_size": list(SIZE), "channels": 3, "normalize": "zscore+minmax",
                                "layout": "discs", "disc_numbers": NUMBERS, "n_average": 7, "prior": {},
                                "depth": {"sigma_mm": 2.0, "slices": 3, "sweep_mm": 12.0}}}
    return Predictor(BrightRows(bands), config, device="cpu", precision="fp32", runtime="torch")


def test_discs_off_the_midline_are_placed_off_it_in_csv_and_sr(shared, tmp_path):
    from napari_medseg.io.dicom_sr import write_sr
    from tests.test_dicom_seg_sr import _as_dicom_series

    vol, truth = _synthetic_spine()
    pts = _predictor().label_discs(vol)
    assert pts.numbers == NUMBERS
    np.testing.assert_allclose(pts.voxels()[:, 2], DISC_LR, atol=0.5)  # not the middle slice (8)
    csv = io.read_points(io.write_points(tmp_path / "discs.csv", pts))
    np.testing.assert_allclose(csv.world, truth.world, atol=0.75)  # mm, in 3-D
    series = _as_dicom_series(io.Volume(vol.data.astype(np.uint16), vol.affine, name="synthetic"), tmp_path / "dcm")
    dicom_vol = io.read(series)[0]
    on_dicom = _predictor().label_discs(dicom_vol)
    sr = io.read_points(write_sr(tmp_path / "discs_sr.dcm", on_dicom, dicom_vol))
    assert sr.numbers == NUMBERS
    np.testing.assert_allclose(sr.world, truth.world, atol=0.75)
    # read independently of our reader: pydicom walking the SR's content tree for its 3-D points (LPS)
    import pydicom

    def scoords(items):
        for item in items:
            if getattr(item, "ValueType", "") == "SCOORD3D":
                yield np.asarray(item.GraphicData, float)
            yield from scoords(getattr(item, "ContentSequence", []))

    lps = np.array(list(scoords(pydicom.dcmread(tmp_path / "discs_sr.dcm").ContentSequence)))
    want = truth.world * np.array([-1.0, -1.0, 1.0])  # RAS -> LPS, from the synthetic volume's own geometry
    assert len(lps) == len(NUMBERS)
    assert max(np.linalg.norm(lps - w, axis=1).min() for w in want) < 0.75
    off = [i for i, lr in enumerate(DISC_LR) if abs(lr - 8) >= 3]
    middle = truth.world.copy()
    middle[:, 0] = (vol.affine @ np.r_[0, 0, 8, 1.0])[0]  # the same discs on the middle slice: 3-5 mm off
    assert np.linalg.norm(sr.world[off] - middle[off], axis=1).min() >= 2.5


def test_a_model_without_depth_channels_keeps_its_discs_on_the_middle_slice():
    vol, _truth = _synthetic_spine()
    pred = _predictor()
    pred.pre = {k: v for k, v in pred.pre.items() if k != "depth"}
    pts = pred.label_discs(vol)
    np.testing.assert_allclose(pts.voxels()[:, 2], 8.0)


def test_the_model_card_names_the_augmentation_its_run_did():
    """A card's augmentation text follows the run: no depth-sweep views without depth channels, the square
    crops where the run drew them; the bundled disc card says exactly that."""
    from napari_medseg import api
    from napari_medseg.engine import checkpoint as ckpt

    plain = tasks.KEYPOINTS.augmentation_text({"augment": True}, {"depth": {"sigma_mm": 2.0}})
    assert "depth sweep" in plain and "magnified square" not in plain
    squares = tasks.KEYPOINTS.augmentation_text({"augment": True, "disc_square_crops": 0.4}, {})
    assert "depth sweep" not in squares and "40% of them instead a magnified square" in squares
    assert tasks.SEGMENTATION.augmentation_text({"augment": False}, {}) == "none"
    cfg = ckpt.read_config(api.bundled_weights()["hourglass-spine-discs"])
    assert cfg["card"]["augmentation"] == tasks.KEYPOINTS.augmentation_text(cfg["training"], cfg["preprocessing"])
