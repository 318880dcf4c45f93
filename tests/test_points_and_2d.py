import json

import nibabel as nib
import numpy as np
import pytest

from napari_medseg import io
from napari_medseg.io.errors import MedSegIOError


def test_disc_names_follow_sct():
    assert io.disc_name(3) == "C2/C3"
    assert io.disc_name(19) == "T11/T12" and io.disc_name(20) == "T12/L1"
    assert io.disc_name(21) == "L1/L2" and io.disc_name(25) == "L5/S1"
    for n in range(1, 27):
        assert io.disc_number(io.disc_name(n)) == n
    assert io.disc_number("l5-s1") == 25
    with pytest.raises(ValueError):
        io.disc_number("L5/L3")


def test_label_nifti_to_points(volumes):
    pts = io.read_points(volumes / "pam50-small-t2_labels-disc.nii.gz")
    assert len(pts) == 18 and pts.numbers == list(range(2, 20))
    ref = nib.load(volumes / "pam50-small-t2_labels-disc.nii.gz")
    d = pts.discs[pts.numbers.index(19)]
    np.testing.assert_allclose(d.world, nib.affines.apply_affine(ref.affine, [35, 35, 42]))


@pytest.mark.parametrize("fmt", ["csv", "json", "nii.gz"])
def test_points_round_trip(volumes, tmp_path, fmt):
    src = volumes / "pam50-small-t2_labels-disc.nii.gz"
    pts = io.read_points(src)
    pts.discs[0].confidence = 0.25
    out = io.write_points(tmp_path / f"case_discs.{fmt}", pts)
    back = io.read_points(out)
    assert back.numbers == pts.numbers
    np.testing.assert_allclose(back.world, pts.world, atol=1e-4)
    if fmt != "nii.gz":
        assert back.discs[0].confidence == pytest.approx(0.25)
        np.testing.assert_allclose([d.voxel for d in back.discs], pts.voxels(), atol=1e-4)
    else:  # the single-voxel file is identical to the source labels
        a, b = nib.load(src), nib.load(out)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)


def test_points_csv_columns(volumes, tmp_path):
    pts = io.read_points(volumes / "spine-t2-crop_labels.nii.gz")
    out = io.write_points(tmp_path / "s_discs.csv", pts)
    lines = out.read_text().splitlines()
    assert lines[0] == "name,sct_number,confidence,x_mm,y_mm,z_mm,i,j,k,flag"
    assert lines[1].startswith("C2/C3,3,1.0000,")
    obj = json.loads(io.write_points(tmp_path / "s_discs.json", pts).read_text())
    assert obj["discs"][1]["name"] == "C4/C5" and len(obj["affine"]) == 4


def test_points_outside_volume_refused(volumes, tmp_path):
    pts = io.read_points(volumes / "pam50-small-t2_labels-disc.nii.gz")
    pts.discs[0].world = (1e4, 0, 0)
    with pytest.raises(MedSegIOError, match=r"disc C1/C2 at voxel .* lies outside the volume"):
        io.write_points(tmp_path / "x_labels-disc.nii.gz", pts)
    assert not any(tmp_path.iterdir())


def test_bad_points_csv(tmp_path):
    p = tmp_path / "a_discs.csv"
    p.write_text("foo,bar\n1,2\n")
    with pytest.raises(MedSegIOError, match="a_discs.csv: missing columns"):
        io.read_points(p)
    p.write_text("name,x_mm,y_mm,z_mm\nL9/L10,1,2,3\n")
    with pytest.raises(MedSegIOError, match="unknown disc name"):
        io.read_points(p)


def test_rgb_image_stays_rgb(shared):
    f = sorted((shared / "kvasir-seg" / "images").glob("*.jpg"))[0]
    vol = io.read_image2d(f)
    assert vol.rgb and vol.data.ndim == 3 and vol.data.shape[-1] == 3 and vol.data.dtype == np.uint8
    assert vol.kind == "image"


def test_png_mask_is_labels_and_round_trips(shared, tmp_path):
    f = sorted((shared / "ph2" / "masks").glob("*.png"))[0]
    vol = io.read_image2d(f)
    assert vol.kind == "labels" and vol.data.ndim == 2
    out = io.write_image2d(tmp_path / "m_seg.png", (vol.data > 0).astype(np.uint8))
    np.testing.assert_array_equal(io.read_image2d(out).data, (vol.data > 0))


def test_labels_not_saved_as_jpeg(tmp_path):
    with pytest.raises(MedSegIOError, match="lossy"):
        io.write_image2d(tmp_path / "m.jpg", np.zeros((4, 4), np.uint8))


def test_corrupt_image(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG garbage")
    with pytest.raises(MedSegIOError, match="x.png: not a readable image"):
        io.read_image2d(p)


def test_an_offline_download_is_one_line_naming_the_file_and_what_to_do(tmp_path, monkeypatch):
    import pooch

    from napari_medseg.io import datasets

    def offline(*_a, **_k):
        raise OSError("HTTPSConnectionPool(host='example.org', port=443): Max retries exceeded "
                      "(NameResolutionError: Failed to resolve 'example.org')")

    monkeypatch.delenv(datasets.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(datasets.ENV_CACHE, str(tmp_path))
    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(MedSegIOError) as err:
        datasets.fetch("mr_spine")  # downloaded from its public original (not one of the shipped samples)
    text = str(err.value)
    assert "could not be downloaded" in text and datasets.ENV_DATA_DIR in text and "offline" in text
    assert "HTTPSConnectionPool" not in text and "\n" not in text and err.value.__cause__ is None


def test_sample_registry_verifies_checksums(tmp_path, monkeypatch, shared):
    from napari_medseg.io import datasets

    assert datasets.fetch("mr_spine").name == "pam50-small-t2.nii.gz"
    assert len(list(datasets.fetch("ct_dicom").iterdir())) == 20
    fake = tmp_path / "volumes"
    fake.mkdir()
    (fake / "pam50-small-t2.nii.gz").write_bytes(b"tampered")
    monkeypatch.setenv(datasets.ENV_DATA_DIR, str(tmp_path))
    with pytest.raises(MedSegIOError, match="checksum mismatch"):
        datasets.fetch("mr_spine")


# ---------------------------------------------------------------- disc flags (guard rails)


def _chain(n=6, spacing=35.0, conf=0.9):
    from napari_medseg.io import Disc, DiscPoints

    return DiscPoints([Disc(19 + i, (0.0, 0.0, -spacing * i), conf) for i in range(n)])


def test_a_plausible_chain_has_no_flags():
    from napari_medseg.engine.discs import flag_discs

    pts = flag_discs(_chain())
    assert pts.flags == [""] * 6 and pts.verdict == "ok"


def test_a_disc_in_posterior_soft_tissue_and_a_low_confidence_are_flagged():
    from napari_medseg.engine.discs import flag_discs

    pts = _chain()
    pts.discs[3].world = (0.0, -62.0, -105.0)  # 62 mm posterior of its place in the chain
    pts.discs[5].confidence = 0.26
    flag_discs(pts)
    assert "off the line of its neighbours" in pts.discs[3].flag
    assert "low confidence 0.26" in pts.discs[5].flag
    assert [bool(f) for f in pts.flags] == [False, False, False, True, False, True]
    assert pts.verdict.startswith("check: L2/L3 (") and "L4/L5" in pts.verdict


def test_a_skipped_level_shows_as_a_spacing_flag():
    from napari_medseg.engine.discs import flag_discs

    pts = _chain()
    for d in pts.discs[3:]:  # named one level too high from L1/L2 on: a 70 mm gap for one level
        d.world = (0.0, 0.0, d.world[2] - 35.0)
    flag_discs(pts)
    assert "per level to" in pts.discs[2].flag and "per level to" in pts.discs[3].flag
    assert not pts.discs[0].flag and not pts.discs[5].flag


def test_flags_travel_through_csv_json_and_a_points_layer(tmp_path):
    from napari_medseg.engine.discs import flag_discs
    from napari_medseg.geometry import points_from_layer_data, points_to_layer_data

    pts = _chain()
    pts.discs[2].confidence = 0.1
    flag_discs(pts)
    for ext in ("csv", "json"):
        back = io.read_points(io.write_points(tmp_path / f"x_discs.{ext}", pts))
        assert back.flags == pts.flags
    data, kwargs = points_to_layer_data(pts)
    assert kwargs["features"]["flag"] == pts.flags and kwargs["border_color"][2] != kwargs["border_color"][0]
    assert points_from_layer_data(data, kwargs["features"], None).flags == pts.flags


def test_a_scan_cropped_outside_the_training_field_is_flagged(shared):
    """The bundled disc model on the upper half of a lumbar test scan (a field of view it never saw, still
    inside what the input check lets through): the output says it needs checking."""
    import warnings

    import nibabel as nib

    from napari_medseg import api
    from napari_medseg.engine import data as D
    from napari_medseg.engine.discs import DiscsFlagged

    layout = D.discover(shared / "spine-discs")
    vol = io.read(layout.pairs["spine_vb2_05"][0])[0]
    si = [i for i, c in enumerate(nib.aff2axcodes(vol.affine)) if c in "SI"][0]
    keep = int(vol.data.shape[si] * 0.55)
    crop = io.Volume(np.take(vol.data, range(keep), axis=si), vol.affine, name="upper half")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pts = api.label_discs(crop, model="hourglass-spine-discs", device="cpu")
    assert pts.verdict.startswith("check:")
    assert any(issubclass(w.category, DiscsFlagged) for w in caught)
    # the whole scan, by contrast, is anchored: every disc it names sits on the reference disc of that name
    # (the bundled model misses one of six here, L2/L3, and renames one disc after the anchor, which it flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiscsFlagged)
        full = api.label_discs(vol, model="hourglass-spine-discs", device="cpu")
    truth = D.disc_points(layout.pairs["spine_vb2_05"][1], vol)
    named = [(n, w) for n, w in zip(truth.names, truth.world) if n in full.names]
    assert len(named) >= 5
    for n, w in named:
        assert np.linalg.norm(full.world[full.names.index(n)] - w) < 5.0, n
    assert "not anchored" not in full.verdict


def test_seg_png_keeps_class_values_and_is_visible_in_any_viewer(tmp_path):
    from PIL import Image

    labels = np.zeros((20, 30), np.uint8)
    labels[5:10, 5:10], labels[12:15, 2:4] = 1, 3
    path = io.write_image2d(tmp_path / "case_seg.png", labels)
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), labels)  # the class numbers, as stored
        rgb = np.asarray(im.convert("RGB"))  # what an image viewer shows
    assert rgb[6, 6].max() > 100 and rgb[13, 3].max() > 100 and not rgb[0, 0].any()
    assert tuple(rgb[6, 6]) != tuple(rgb[13, 3])
    np.testing.assert_array_equal(io.read_image2d(path).data, labels)


def _numbered_chain(numbers, spacing=30.0):
    from napari_medseg.io.points import Disc, DiscPoints

    return DiscPoints([Disc(n, (0.0, 0.0, -spacing * k), 0.9) for k, n in enumerate(numbers)], np.eye(4))


def test_a_named_disc_renumbers_the_chain_in_order():
    from napari_medseg.engine.discs import apply_prior
    from napari_medseg.io.points import Disc

    pred = _numbered_chain([21, 23, 24, 25])  # found in order, but misnamed with a skipped level
    out = apply_prior(pred, [Disc(io.disc_number("T12/L1"), (0.5, 0.0, -31.0))])
    assert [d.name for d in out.discs] == ["T11/T12", "T12/L1", "L1/L2", "L2/L3"]
    assert out.discs[1].world == (0.5, 0.0, -31.0) and out.discs[1].confidence == 1.0  # the person's point wins
    assert [d.number for d in pred.discs] == [21, 23, 24, 25]  # input untouched
    # a real gap (a disc the model missed: two spacings) skips a level
    from napari_medseg.io.points import Disc as D2, DiscPoints

    gap = DiscPoints([D2(20, (0, 0, 0.0)), D2(21, (0, 0, -30.0)), D2(22, (0, 0, -90.0)), D2(23, (0, 0, -120.0))], np.eye(4))
    out = apply_prior(gap, [D2(18, (0, 0, 0.0))])
    assert [d.number for d in out.discs] == [18, 19, 21, 22]
    with pytest.raises(ValueError, match="no disc has SCT number"):  # renumbered past the last disc: an error
        apply_prior(_numbered_chain([20, 21, 22]), [D2(29, (0, 0, 0.0))])
    with pytest.raises(ValueError, match="disagree"):
        apply_prior(_numbered_chain([20, 21, 22]), [D2(20, (0, 0, 0.0)), D2(20, (0, 0, -60.0))])


def test_one_named_disc_fixes_the_numbering_on_a_scan_missing_its_top_discs(shared, tmp_path, capsys):
    """The multi-site test scan without its top 25 % and cut to a square around the spine (magnified, more
    sacrum in view): the bundled model names every disc one level high (and flags it); one disc
    named by a person (the lowest, from the reference) fixes the names of the others, through the API and
    through `label-discs --prior`."""
    import warnings

    from napari_medseg import api
    from napari_medseg.cli import main
    from napari_medseg.engine.evaluate import crop_field_of_view

    stem = "spine_vb1_16"
    vol = io.read_nifti(shared / "spine-discs" / "images" / f"{stem}.nii.gz")
    truth = io.read_points(shared / "spine-discs" / "labels" / f"{stem}_labels-disc.nii.gz")
    crop, kept = crop_field_of_view(vol, truth, 0.25, square=True)
    crop.name = f"{stem}_lower"
    inside = kept.discs
    assert [d.name for d in inside] == ["T12/L1", "L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]

    def named_right(points):
        got = 0
        for d in inside:
            k = int(np.argmin(np.linalg.norm(points.world - np.asarray(d.world), axis=1)))
            got += points.discs[k].number == d.number and np.linalg.norm(points.world[k] - d.world) < 10
        return got

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = api.label_discs(crop, model="hourglass-spine-discs", device="cpu", force=True)
        marked = io.DiscPoints([inside[-1]], crop.affine)
        fixed = api.label_discs(crop, model="hourglass-spine-discs", device="cpu", force=True, prior=marked)
    assert named_right(plain) == 0
    assert named_right(fixed) >= 5
    # the same through the CLI, with the named disc in a points file
    io.write_nifti(tmp_path / f"{stem}_lower.nii.gz", crop.data, reference=crop)
    io.write_points(tmp_path / "named.csv", marked)
    assert main(["label-discs", str(tmp_path / f"{stem}_lower.nii.gz"), "--out", str(tmp_path / "out"), "--force",
                 "--prior", str(tmp_path / "named.csv")]) == 0
    cli = io.read_points(tmp_path / "out" / f"{stem}_lower_discs.csv")
    assert [d.name for d in cli.discs] == [d.name for d in fixed.discs]
    io.write_nifti(tmp_path / "another.nii.gz", crop.data, reference=crop)
    # a named disc belongs to one scan, not a folder: refused with the reason, exit 2, nothing written
    assert main(["label-discs", str(tmp_path / f"{stem}_lower.nii.gz"), str(tmp_path / "another.nii.gz"),
                 "--out", str(tmp_path / "out2"), "--prior", str(tmp_path / "named.csv")]) == 2
    assert "belong to one scan" in capsys.readouterr().err and not (tmp_path / "out2").exists()
