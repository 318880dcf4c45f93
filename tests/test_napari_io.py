"""The reader, writer and sample-data contributions in a real napari viewer (Xvfb)."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medseg import io
from napari_medseg.geometry import ras_to_world, world_to_ras

# These tests place oblique and rotated layers on purpose: napari says it draws them without the
# out-of-plane rotation (its known display limit); what the tests check is where the data are, not the
# picture. The oblique Philips DICOM holds magnitude and phase in one series: the reader says so and splits it.
pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("ignore:Non-orthogonal slicing is being requested:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*mixes image types:napari_medseg.io.errors.MedSegIOWarning"),
]

PLACEMENT_CASES = [
    "spine-t2-crop.nii.gz",  # PSR: permuted axes
    "pam50-small-t2.nii.gz",  # LAS: flipped
    "mr-abdomen-small.nii.gz",  # LPS
    "mr-dicom-series-siemens_dicom2nifti-reference.nii.gz",  # PIL
    "mr-dicom-series-philips",  # oblique DICOM (two volumes: magnitude and phase)
]


def _file_geometry(path):
    if path.is_dir():
        vol = io.read_dicom(path)[0]
        return vol.data, vol.affine
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


@pytest.mark.parametrize("name", PLACEMENT_CASES)
def test_layer_lands_where_nibabel_says(make_napari_viewer, volumes, name):
    viewer = make_napari_viewer()
    layers = viewer.open(str(volumes / name), plugin="napari-medseg")
    layer = layers[0]
    data, affine = _file_geometry(volumes / name)
    rng = np.random.default_rng(0)
    voxels = np.c_[[rng.integers(0, s, 12) for s in data.shape[:3]]].T
    for v in voxels:
        world_ras = nib.affines.apply_affine(affine, v)
        idx = np.asarray(layer.world_to_data(ras_to_world(world_ras)[0]))
        assert np.allclose(idx, np.round(idx), atol=1e-6), (v, idx)
        assert layer.data[tuple(np.round(idx).astype(int))] == data[tuple(v)]
        np.testing.assert_allclose(world_to_ras(layer.data_to_world(np.round(idx)))[0], world_ras, atol=1e-6)


def test_labels_layer_saved_back_exactly(make_napari_viewer, volumes, tmp_path):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(volumes / "spine-t2-crop_cord-seg-manual.nii.gz"), plugin="napari-medseg")
    assert layer._type_string == "labels"
    layer.data[layer.data > 0] = 2  # edit
    out = tmp_path / "edited_seg.nii.gz"
    layer.save(str(out), plugin="napari-medseg")
    src, res = nib.load(volumes / "spine-t2-crop_cord-seg-manual.nii.gz"), nib.load(out)
    assert np.array_equal(res.affine, src.affine)
    np.testing.assert_array_equal(np.asarray(res.dataobj), np.asarray(src.dataobj) * 2)


def test_new_labels_on_image_saved_with_image_geometry(make_napari_viewer, volumes, tmp_path):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(volumes / "pam50-small-t2.nii.gz"), plugin="napari-medseg")
    labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), metadata=dict(image.metadata),
                               scale=image.scale, affine=image.affine)
    labels.data[10, 20, 30] = 1
    out = tmp_path / "drawn.nii.gz"
    labels.save(str(out), plugin="napari-medseg")
    res = nib.load(out)
    assert np.array_equal(res.affine, nib.load(volumes / "pam50-small-t2.nii.gz").affine)
    [v] = np.argwhere(np.asarray(res.dataobj))
    np.testing.assert_allclose(ras_to_world(nib.affines.apply_affine(res.affine, v))[0], labels.data_to_world((10, 20, 30)))


def test_labels_without_metadata_use_layer_transform(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((4, 5, 6), np.uint8), scale=(3, 2, 1), translate=(10, 20, 30))
    layer.data[1, 2, 3] = 7
    out = tmp_path / "plain.nii.gz"
    layer.save(str(out), plugin="napari-medseg")
    res = nib.load(out)
    [v] = np.argwhere(np.asarray(res.dataobj) == 7)
    np.testing.assert_allclose(ras_to_world(nib.affines.apply_affine(res.affine, v))[0], layer.data_to_world((1, 2, 3)))


def test_writer_refuses_mismatched_shape(make_napari_viewer, volumes, tmp_path):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(volumes / "ct-spleen-crop.nii.gz"), plugin="napari-medseg")
    bad = viewer.add_labels(np.zeros((3, 3, 3), np.uint8), metadata=dict(image.metadata))
    with pytest.raises(Exception, match=r"does not match the source geometry"):
        bad.save(str(tmp_path / "bad.nii.gz"), plugin="napari-medseg")
    assert not any(tmp_path.iterdir())


def test_points_open_edit_save(make_napari_viewer, volumes, tmp_path):
    viewer = make_napari_viewer()
    [points] = viewer.open(str(volumes / "pam50-small-t2_labels-disc.nii.gz"), plugin="napari-medseg")
    assert points._type_string == "points" and len(points.data) == 18
    assert list(points.features["name"][:2]) == ["C1/C2", "C2/C3"]
    points.selected_data = {0}  # delete C1/C2 the way a user does
    points.remove_selected()
    points.data[0] = points.data[0] + 1.0  # and move C2/C3 by 1 mm on every axis
    for ext in ("csv", "json", "nii.gz"):
        out = tmp_path / f"pam_discs.{ext}" if ext != "nii.gz" else tmp_path / "pam_labels-disc.nii.gz"
        points.save(str(out), plugin="napari-medseg")
        back = io.read_points(out)
        assert back.numbers == list(range(3, 20))
        if ext != "nii.gz":
            np.testing.assert_allclose(back.world[0], world_to_ras(points.data[0])[0], atol=1e-4)
    [reopened] = viewer.open(str(tmp_path / "pam_discs.json"), plugin="napari-medseg")
    np.testing.assert_allclose(reopened.data, points.data, atol=1e-4)


@pytest.mark.parametrize("key,types", [
    ("ct_dicom", ["image"]),
    ("mr_spine", ["image", "points"]),
    ("endoscopy", ["image", "labels"]),
    ("ct_abdomen", ["image", "labels"]),
    ("skin", ["image", "labels"]),
])
def test_sample_data(make_napari_viewer, key, types):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-medseg", key)
    assert [lyr._type_string for lyr in layers] == types
    if key == "endoscopy":
        assert layers[0].rgb and set(np.unique(layers[1].data)) == {0, 1}


def _empty_gz(d):
    (d / "empty.nii.gz").write_bytes(b"")
    return d / "empty.nii.gz"


def _text_nii(d):
    (d / "text.nii").write_text("hello " * 100)
    return d / "text.nii"


def _no_dicom(d):
    (d / "nodicom").mkdir()
    (d / "nodicom" / "a.txt").write_text("x")
    return d / "nodicom"


@pytest.mark.parametrize("make_bad,message", [
    (_empty_gz, "empty.nii.gz: empty file"),
    (_text_nii, "text.nii: not a valid NIfTI"),
])
def test_bad_input_keeps_napari_up(make_napari_viewer, tmp_path, make_bad, message):
    viewer = make_napari_viewer()
    path = make_bad(tmp_path)
    with pytest.raises(Exception) as err:
        viewer.open(str(path), plugin="napari-medseg")
    assert message in str(err.value)
    assert len(viewer.layers) == 0
    viewer.open_sample("napari-medseg", "mr_spine")  # still usable
    assert len(viewer.layers) == 2


def test_two_series_folder_gives_two_layers(make_napari_viewer, volumes, tmp_path):
    import shutil

    shutil.copytree(volumes / "ct-dicom-series-jpeg2000", tmp_path / "study" / "ct")
    shutil.copytree(volumes / "mr-dicom-series-siemens", tmp_path / "study" / "mr")
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "study"), plugin="napari-medseg")
    assert sorted(lyr.data.size for lyr in layers) == [256 * 256 * 4, 512 * 512 * 20]
    assert {lyr.metadata["info"]["Modality"] for lyr in layers} == {"CT", "MR"}


@pytest.mark.parametrize("name", PLACEMENT_CASES[:4])
def test_radiological_display(make_napari_viewer, volumes, name):
    """With napari's default camera (rows grow downwards, columns to the right), an axial slice shows anterior
    up and the patient's right on the screen's left; sagittal and coronal views show the head up. So one step
    down a layer's rows goes posterior, one step right goes to the patient's left, one slider step inferior;
    whatever the file's storage order."""
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(volumes / name), plugin="napari-medseg")
    origin = world_to_ras(layer.data_to_world((0, 0, 0)))[0]
    step = [world_to_ras(layer.data_to_world(e))[0] - origin for e in np.eye(3)]
    axis_of = {0: "R", 1: "A", 2: "S"}
    main = [axis_of[int(np.argmax(np.abs(s)))] for s in step]
    assert main == ["S", "A", "R"], main
    assert step[0][2] < 0 and step[1][1] < 0 and step[2][0] < 0  # inferior, posterior, patient's left
    assert np.all(np.asarray(layer.scale) > 0)


def test_reader_returns_none_unless_sure(volumes, shared, tmp_path):
    """napari's template contract: foreign files and folders get None so that another reader can take them."""
    from napari_medseg._napari._reader import get_reader, read_layers

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for name in sorted((shared / "kvasir-seg" / "images").iterdir())[:3]:
        (pngs / name.name).write_bytes(name.read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    zarr = tmp_path / "x.zarr"
    zarr.mkdir()
    foreign = [pngs, next(pngs.iterdir()), tmp_path / "notes.txt", zarr, _no_dicom(tmp_path), [str(pngs), str(volumes / "ct-spleen-crop.nii.gz")]]
    for path in foreign:
        assert get_reader(path if isinstance(path, list) else str(path)) is None, path
    ours = [volumes / "ct-spleen-crop.nii.gz", volumes / "ct-dicom-series-jpeg2000",
            next((volumes / "ct-dicom-series-jpeg2000").rglob("*.dcm"), None) or
            next(p for p in (volumes / "ct-dicom-series-jpeg2000").rglob("*") if p.is_file()),
            volumes / "pam50-small-t2_labels-disc.nii.gz"]
    for path in ours:
        assert get_reader(str(path)) is read_layers, path
    import yaml

    manifest = yaml.safe_load((Path(__file__).parents[1] / "napari.yaml").read_text())
    patterns = [p for r in manifest["contributions"]["readers"] for p in r["filename_patterns"]]
    assert "*" not in patterns


@pytest.mark.filterwarnings("ignore:.*derived ones were used:napari_medseg.io.errors.MedSegIOWarning")  # anonymised
@pytest.mark.filterwarnings("ignore:.*is not open; opened on the SEG's own geometry")  # the SEG opened alone, on purpose
@pytest.mark.filterwarnings("ignore:.*PatientAge not valid for their DICOM type:UserWarning")  # the Siemens series' "0Y", said
def test_labels_on_a_dicom_series_saved_as_seg_and_points_as_sr(make_napari_viewer, volumes, tmp_path):
    """Save Layers with .dcm: a Labels layer drawn on a DICOM series becomes a DICOM SEG referencing it, a
    Points layer a DICOM SR; both reopen in napari where they were."""
    import shutil

    from napari_medseg import api
    from napari_medseg.geometry import RESULT_KEY
    from napari_medseg.io.errors import MedSegIOError

    series = tmp_path / "series"
    shutil.copytree(volumes / "mr-dicom-series-siemens", series)
    viewer = make_napari_viewer()
    [image] = viewer.open(str(series), plugin="napari-medseg")
    seg = api.segment(image, model="unet-acdc-300", device="cpu", force=True)
    from napari_medseg._napari._layers import labels_layer_data

    data, kwargs, _ = labels_layer_data(seg.labels, image, seg.class_names, "seg", seg.model)
    labels = viewer.add_labels(data, **kwargs)
    assert labels.metadata[RESULT_KEY]["name"] == "unet-acdc-300"
    out = tmp_path / "result_seg.dcm"
    labels.save(str(out), plugin="napari-medseg")
    [back] = viewer.open(str(out), plugin="napari-medseg")
    assert back._type_string == "labels"
    names = list(back.features["class"])  # the segment labels, as the layer's class names
    expected = np.zeros_like(labels.data)
    for n, name in enumerate(names[1:], start=1):
        expected[labels.data == seg.class_names.index(name)] = n
    np.testing.assert_array_equal(back.data, expected)
    np.testing.assert_allclose(back.data_to_world((1, 2, 3)), labels.data_to_world((1, 2, 3)), atol=1e-4)
    # points on the series -> a DICOM SR -> a Points layer at the same place
    pts = viewer.add_points(np.array([labels.data_to_world((1, 100, 120)), labels.data_to_world((2, 110, 150))]),
                            features={"name": ["L3/L4", "L4/L5"]}, metadata={"medseg": dict(image.metadata["medseg"])})
    sr = tmp_path / "discs_sr.dcm"
    pts.save(str(sr), plugin="napari-medseg")
    [reopened] = viewer.open(str(sr), plugin="napari-medseg")
    assert reopened._type_string == "points" and list(reopened.features["name"]) == ["L3/L4", "L4/L5"]
    np.testing.assert_allclose(reopened.data_to_world(reopened.data[0]), pts.data[0], atol=1e-3)
    # a Labels layer on a NIfTI image: one clear line, nothing written
    [nii] = viewer.open(str(volumes / "pam50-small-t2.nii.gz"), plugin="napari-medseg")
    drawn = viewer.add_labels(np.zeros(nii.data.shape, np.uint8), metadata=dict(nii.metadata), scale=nii.scale,
                              affine=nii.affine)
    drawn.data[10, 20, 30] = 1
    with pytest.raises(MedSegIOError, match="not lie on a DICOM series"):
        drawn.save(str(tmp_path / "nope.dcm"), plugin="napari-medseg")
    assert not (tmp_path / "nope.dcm").exists()
