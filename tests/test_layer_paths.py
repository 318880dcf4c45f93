"""One exact path from napari layers to the network and back (geometry, preprocessing, points), in a real
viewer: the slices the network trains on are the slices every inference path gives it."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_medseg import api, io
from napari_medseg.geometry import WORLD_FROM_RAS, ras_to_world, world_to_ras

# These tests place oblique and rotated layers on purpose: napari says it draws them without the
# out-of-plane rotation (its known display limit); what the tests check is where the data are, not the
# picture. The oblique Philips DICOM holds magnitude and phase in one series: the reader says so and splits it.
pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("ignore:Non-orthogonal slicing is being requested:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*mixes image types:napari_medseg.io.errors.MedSegIOWarning"),
]


def _dock(viewer, name):
    _, w = viewer.window.add_plugin_dock_widget("napari-medseg", name)
    return w


def _bars():
    """A non-square (8 x 64 x 48) volume with two bars of equal brightness: the horizontal one is labelled,
    the vertical one is not. A network that sees transposed slices at inference marks the wrong bar."""
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 0.15, (8, 64, 48)).astype(np.float32)
    lab = np.zeros(img.shape, np.uint8)
    img[:, 8:16, 4:44] += 1.0
    lab[:, 8:16, 4:44] = 1
    img[:, 26:62, 18:26] += 1.0
    return img, lab


def test_train_widget_and_every_segment_path_agree(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    img, lab = _bars()
    transform = dict(scale=(3.0, 0.8, 0.7), translate=(10.0, -5.0, 7.0))
    image = viewer.add_image(img, name="bars", **transform)
    labels = viewer.add_labels(lab, name="bars labels", **transform)
    w = _dock(viewer, "Train")
    w.image.value, w.labels_layer.value = image.name, labels.name
    w.network.value = "unet"
    w.epochs.value, w.batch.value, w.input_size.value, w.lr.value = 30, 4, 64, 3e-3
    w.out.value = str(tmp_path / "run")
    w.controls.run_button.clicked()
    qtbot.waitUntil(lambda: w.result is not None or not w.controls.cancel_button.enabled, timeout=400_000)
    assert w.result is not None, w.controls.status.value
    ckpt = w.result["best_checkpoint"]

    # 1. the Segment widget
    seg = _dock(viewer, "Segment")
    session = [c for c in seg.weights.choice.choices if "this session" in c]
    seg.weights.choice.value = session[-1]
    seg.image.value = image.name
    seg.controls.run_button.clicked()
    qtbot.waitUntil(lambda: seg.last_layer is not None, timeout=120_000)
    by_widget = np.asarray(seg.last_layer.data)
    # 2. the API with the layer
    by_api_layer = api.segment(image, weights=ckpt, device="cpu").labels
    # 3. the API with the file the plugin's writer saves
    path = tmp_path / "bars.nii.gz"
    image.save(str(path), plugin="napari-medseg")
    saved = nib.load(path)
    by_api_file = api.segment(str(path), weights=ckpt, device="cpu").labels
    # 4. the CLI on that file
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "napari_medseg.cli", "predict", "--weights", ckpt, str(path), "--out",
                    str(out), "--device", "cpu"], check=True, capture_output=True, timeout=300)
    by_cli = np.asarray(nib.load(out / "bars_seg.nii.gz").dataobj)

    # a layer made in napari is saved in its own array order with the affine of its transform
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = np.diag(transform["scale"]), transform["translate"]
    np.testing.assert_allclose(saved.affine, WORLD_FROM_RAS @ m, atol=1e-6)
    for other in (by_api_layer, by_api_file, by_cli):
        np.testing.assert_array_equal(other, by_widget)
    horizontal = lab == 1
    vertical = np.zeros_like(horizontal)
    vertical[:, 26:62, 18:26] = True
    found = by_widget == 1
    dice = 2 * (found & horizontal).sum() / (found.sum() + horizontal.sum())
    assert dice > 0.8, dice
    assert (found & vertical).sum() < 0.1 * vertical.sum()


def test_current_slice_equals_that_slice_of_a_full_run(make_napari_viewer, qtbot, trained, volumes):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(volumes / "ct-spleen-crop.nii.gz"), plugin="napari-medseg")
    # force: the tiny test model was trained on cardiac MRI; this checks the slice path, not accuracy
    full = api.segment(image, weights=trained["vol"], device="cpu", force=True).labels
    k = int(np.argmax([(full[i] > 0).sum() for i in range(full.shape[0])]))  # a slice with foreground
    assert full[k].any()
    viewer.dims.set_current_step(0, k)
    w = _dock(viewer, "Segment")
    w.image.value = image.name
    w.weights.choice.value = "checkpoint folder..."
    w.weights.folder.value = trained["vol"]
    w.current_slice.value = True
    w.force.value = True
    w.controls.run_button.clicked()
    qtbot.waitUntil(lambda: w.last_layer is not None, timeout=60_000)
    data = w.last_layer.data
    assert data.shape == image.data.shape
    np.testing.assert_array_equal(data[k], full[k])
    assert not np.delete(data, k, axis=0).any()


def test_a_plugin_layer_gives_back_the_file_exactly(make_napari_viewer, volumes):
    viewer = make_napari_viewer()
    for name in ("spine-t2-crop.nii.gz", "pam50-small-t2.nii.gz", "ct-spleen-crop.nii.gz"):
        [layer] = viewer.open(str(volumes / name), plugin="napari-medseg")
        vol, src = api.as_volume(layer), io.read(volumes / name)[0]
        assert np.array_equal(vol.data, src.data) and np.array_equal(vol.affine, src.affine)
        # moved in napari: its own transform wins, and the volume follows the move exactly
        layer.translate = np.asarray(layer.translate) + (4.0, 0.0, 0.0)
        moved = api.as_volume(layer)
        idx = np.array([1.0, 2.0, 3.0])
        np.testing.assert_allclose(world_to_ras(layer.data_to_world(idx))[0],
                                   nib.affines.apply_affine(moved.affine, idx), atol=1e-6)


def test_4d_layer_is_segmented_frame_by_frame(make_napari_viewer, trained):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    series = rng.normal(size=(3, 4, 32, 40)).astype(np.float32)
    layer = viewer.add_image(series, scale=(1.0, 5.0, 1.2, 1.2))
    seg = api.segment(layer, weights=trained["vol"], device="cpu", force=True)
    assert seg.labels.shape == series.shape
    for t in range(3):  # each frame is the 3-D result of that frame alone
        frame = viewer.add_image(series[t], scale=(5.0, 1.2, 1.2))
        np.testing.assert_array_equal(seg.labels[t], api.segment(frame, weights=trained["vol"], device="cpu", force=True).labels)


def test_points_from_the_new_points_button_are_saved_where_they_were_clicked(make_napari_viewer, volumes, tmp_path):
    """Anisotropic (5 x 0.8 x 0.8 mm), translated CT and an oblique MR (DICOM): a point added on a voxel of a
    layer made with napari's own new-points action lands, in the saved file, on that voxel's RAS position."""
    from napari._app_model.actions._file import new_points

    viewer = make_napari_viewer()
    for name, voxel in (("ct-spleen-crop.nii.gz", (100, 60, 12)), ("mr-dicom-series-philips", (300, 400, 2))):
        layers = viewer.open(str(volumes / name), plugin="napari-medseg")
        image = layers[0]
        src = io.read(volumes / name)[0]
        viewer.layers.selection.active = image
        new_points(viewer)
        pts = viewer.layers[-1]
        assert np.allclose(pts.scale, image.scale)  # made the way napari makes it: the image's transform
        # the layer index of the file voxel, found through the image layer's own transform
        ras = nib.affines.apply_affine(src.affine, voxel)
        layer_idx = np.asarray(image.world_to_data(ras_to_world(ras)[0]))
        pts.add(layer_idx)
        pts.features = {"name": ["L1/L2"]}
        out = tmp_path / f"{name.split('.')[0]}_discs.csv"
        pts.save(str(out), plugin="napari-medseg")
        back = io.read_points(out)
        assert back.names == ["L1/L2"]
        np.testing.assert_allclose(back.world[0], ras, atol=1e-3)


def test_labels_from_napari_new_labels_button_train_on_the_plugin_image(make_napari_viewer, volumes):
    """napari's new-labels button copies the image's transform but not its metadata: the painted voxels must
    land on the same file-order slices as the image's."""
    from napari._app_model.actions._file import new_labels

    viewer = make_napari_viewer()
    [image] = viewer.open(str(volumes / "ct-spleen-crop.nii.gz"), plugin="napari-medseg")
    viewer.layers.selection.active = image
    new_labels(viewer)
    labels = viewer.layers[-1]
    assert not labels.metadata
    labels.data[7, 40:60, 50:90] = 1  # painted on the 8th axial slice of the layer
    train, val, summary = api.training_data_from_layers(image, labels, input_size=64)
    src = io.read(volumes / "ct-spleen-crop.nii.gz")[0]
    # the labelled file slice is the one the painted layer slice shows
    file_idx = np.round(nib.affines.apply_affine(np.linalg.inv(src.affine),
                                                 world_to_ras(image.data_to_world((7, 50, 70)))[0])).astype(int)
    assert summary["slice_axis"] == 2 and summary["preview_slice"] == file_idx[2]
    assert train.targets.any() or val.targets.any()


def test_training_data_from_several_corrected_images(make_napari_viewer, shared):
    """The correction loop trains on every image corrected so far: extra (image, labels) pairs join the
    training set by the same preparation; the current image stays the validation sample; the Train widget
    pairs each extra Labels layer with the image it was drawn on; images of another kind are refused."""
    from napari_medseg._napari.train_widget import TrainWidget

    viewer = make_napari_viewer()
    stems = sorted(p.stem for p in (shared / "ph2" / "images").iterdir())[:3]
    pairs = []
    for stem in stems:
        img = io.read_image2d(shared / "ph2" / "images" / f"{stem}.jpg")
        mask = io.read_image2d(shared / "ph2" / "masks" / f"{stem}.png", kind="labels").data
        image = viewer.add_image(img.data, rgb=True, name=stem)
        labels = viewer.add_labels((np.asarray(mask) > 127).astype(np.uint8), name=f"{stem}_seg")
        pairs.append((image, labels))
    one, _, _ = api.training_data_from_layers(*pairs[0], input_size=64)
    train, val, summary = api.training_data_from_layers(*pairs[0], input_size=64, more=pairs[1:])
    assert len(train.images) == 3 and len(val.images) == 1 and summary["pairs"] == 3
    np.testing.assert_array_equal(train.images[0], one.images[0])  # the same preparation for every pair
    for k, (image, labels) in enumerate(pairs[1:], start=1):
        alone, _, _ = api.training_data_from_layers(image, labels, input_size=64)
        np.testing.assert_array_equal(train.images[k], alone.images[0])
        np.testing.assert_array_equal(train.targets[k], alone.targets[0])
    # a grey volume is not the same kind as RGB images
    vol = io.read(shared / "volumes" / "ct-spleen-crop.nii.gz")[0]
    seg = io.read(shared / "volumes" / "ct-spleen-crop_seg-manual.nii.gz")[0]
    with pytest.raises(ValueError, match="not the same kind"):
        api.training_data_from_layers(*pairs[0], input_size=64, more=[(vol, seg)])
    # the widget: labels layers chosen under "also train on" find their images
    w = TrainWidget(viewer)
    assert all(w.image_of(lab) is img for img, lab in pairs)
    w.image.value, w.labels_layer.value = pairs[0][0].name, pairs[0][1].name
    w.more.value = [pairs[1][1].name, pairs[2][1].name]
    w.input_size.value = 64
    t2, _, s2 = w._layer_data()
    assert s2["pairs"] == 3 and len(t2.images) == 3


def test_a_sample_s_labels_go_back_to_their_slice_on_the_image(volumes):
    """api.sample_labels_on: a network-size label map of slice k lands on slice k of the image's own grid
    (nearest resize: a half-and-half map stays half and half), everything else empty."""
    import numpy as np

    from napari_medseg import api, io

    vol = io.read(volumes / "ct-abdomen.nii.gz")[0]
    sample = np.zeros((8, 8), np.uint8)
    sample[:4] = 2  # the first half of the rows
    full = api.sample_labels_on(sample, vol, 2, 5)
    assert full.shape == np.shape(vol.data)[:3]
    placed = full[:, :, 5]
    rows = np.shape(vol.data)[0]
    assert (placed[: rows // 2] == 2).all() and (placed[rows // 2 + 1:] == 0).all()
    assert not np.delete(full, 5, axis=2).any()
    assert api.sample_labels_on(sample, io.Volume(np.zeros((20, 30), np.float32), np.eye(4)), None, None).shape == (20, 30)
