import gzip
import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_medseg import io
from napari_medseg.geometry import layer_data_to_file_order, reference_volume, volume_to_layer_data
from napari_medseg.io.errors import MedSegIOError, MedSegIOWarning

from .conftest import NIFTI_FILES

EXPECTED_KIND = {
    "ct-abdomen-small.nii.gz": "image",
    "ct-abdomen-small_totalseg-output.nii.gz": "labels",
    "ct-abdomen.nii.gz": "image",
    "ct-spleen-crop.nii.gz": "image",
    "ct-spleen-crop_seg-manual.nii.gz": "labels",
    "mr-abdomen-small.nii.gz": "image",
    "mr-abdomen-small_totalseg-output.nii.gz": "labels",
    "pam50-small-t2.nii.gz": "image",
    "pam50-small-t2_labels-disc.nii.gz": "labels",
    "spine-t2-crop.nii.gz": "image",
    "spine-t2-crop_cord-seg-manual.nii.gz": "labels",
    "spine-t2-crop_labels.nii.gz": "labels",
}


@pytest.mark.parametrize("name", NIFTI_FILES)
def test_read_matches_nibabel(volumes, name):
    vol = io.read_nifti(volumes / name)
    ref = nib.load(volumes / name)
    assert vol.data.shape == ref.shape
    np.testing.assert_array_equal(vol.affine, ref.affine)
    np.testing.assert_allclose(vol.data, ref.get_fdata(), rtol=0, atol=1e-6 * max(1, np.abs(ref.get_fdata()).max()))
    assert vol.spacing == pytest.approx(ref.header.get_zooms()[:3])
    assert vol.orientation == "".join(nib.aff2axcodes(ref.affine))
    if name in EXPECTED_KIND:
        assert vol.kind == EXPECTED_KIND[name]
    assert vol.metadata["spatial_units"] in ("mm", "unknown", "meter", "micron")


def test_scaled_int_file_reads_as_float(shared):
    path = sorted((shared / "acdc" / "imagesTr").glob("*.nii.gz"))[0]
    vol = io.read_nifti(path)
    assert vol.data.dtype == np.float32 and vol.kind == "image"
    assert 0 <= vol.data.min() and vol.data.max() <= 1.0 + 1e-6


def test_header_fields(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.float32), np.diag([2, 3, 4, 1]))
    img.header["descrip"] = b"my description"
    img.header.set_intent("t test", (10,), name="stat")
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.5
    nib.save(img, tmp_path / "x.nii.gz")
    vol = io.read_nifti(tmp_path / "x.nii.gz")
    assert vol.data.shape == (4, 5, 6, 3) and vol.spatial_ndim == 3
    assert vol.metadata["description"] == "my description"
    assert vol.metadata["intent"] == "t test" and vol.metadata["intent_name"] == "stat"
    assert (vol.metadata["spatial_units"], vol.metadata["time_units"]) == ("mm", "sec")
    assert vol.metadata["time_step"] == 2.5


# five orientations are present in the shared files: RAS, LAS, LPS, PSR and PIL
ROUND_TRIP = [
    "ct-spleen-crop_seg-manual.nii.gz",
    "pam50-small-t2_labels-disc.nii.gz",
    "mr-abdomen-small_totalseg-output.nii.gz",
    "spine-t2-crop_cord-seg-manual.nii.gz",
    "mr-dicom-series-siemens_dicom2nifti-reference.nii.gz",
]


def test_round_trip_covers_five_orientations(volumes):
    codes = {io.read_nifti(volumes / n).orientation for n in ROUND_TRIP}
    assert codes == {"RAS", "LAS", "LPS", "PSR", "PIL"}


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_labels_round_trip_through_layer_keeps_geometry(volumes, tmp_path, name):
    vol = io.read_nifti(volumes / name, kind="labels")
    layer_data, kwargs = volume_to_layer_data(vol)
    meta = kwargs["metadata"]["medseg"]
    back = layer_data_to_file_order(layer_data, meta)
    out = io.write_nifti(tmp_path / "out.nii.gz", back, reference=reference_volume(meta), kind="labels")
    src, res = nib.load(volumes / name), nib.load(out)
    assert np.array_equal(res.affine, src.affine)  # exact, not allclose
    assert np.array_equal(res.header.get_qform(), src.header.get_qform())
    assert np.array_equal(res.header.get_sform(), src.header.get_sform())
    assert np.array_equal(np.asarray(res.dataobj), np.asarray(src.dataobj).astype(np.asarray(res.dataobj).dtype))
    assert res.header.get_intent()[0] == "label"


def test_zero_byte(tmp_path):
    p = tmp_path / "empty.nii.gz"
    p.write_bytes(b"")
    with pytest.raises(MedSegIOError, match=r"empty.nii.gz: empty file"):
        io.read_nifti(p)


def test_truncated_gz(volumes, tmp_path):
    data = (volumes / "ct-abdomen-small.nii.gz").read_bytes()
    p = tmp_path / "cut.nii.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedSegIOError, match=r"cut.nii.gz: truncated or corrupt") as err:
        io.read_nifti(p)
    assert "\n" not in str(err.value)


def test_truncated_uncompressed(volumes, tmp_path):
    raw = gzip.decompress((volumes / "ct-spleen-crop.nii.gz").read_bytes())
    p = tmp_path / "cut.nii"
    p.write_bytes(raw[:1000])
    with pytest.raises(MedSegIOError, match=r"cut.nii: truncated file: header needs \d+ bytes, file has 1000"):
        io.read_nifti(p)


def test_not_a_nifti(tmp_path):
    p = tmp_path / "notes.nii"
    p.write_text("this is a text file, not an image\n" * 20)
    with pytest.raises(MedSegIOError, match=r"notes.nii: not a valid NIfTI file"):
        io.read_nifti(p)


def test_enormous_header_refused_before_allocating(tmp_path, monkeypatch):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 30000))
    hdr.set_data_dtype(np.float32)
    p = tmp_path / "huge.nii"
    with open(p, "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\0" * 4 + b"\0" * 64)

    def boom(*a, **k):  # the data must never be touched
        raise AssertionError("tried to read voxel data")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", boom)
    with pytest.raises(MedSegIOError, match=r"huge.nii: header claims shape \(30000, 30000, 30000\).*refusing to allocate"):
        io.read_nifti(p)


def test_nan_inf_warns_and_keeps(tmp_path):
    arr = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    arr[0, 0, 0], arr[1, 1, 1] = np.nan, np.inf
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.warns(MedSegIOWarning, match=r"nan.nii.gz: 2 voxel\(s\) are NaN or Inf"):
        vol = io.read_nifti(tmp_path / "nan.nii.gz")
    assert np.isnan(vol.data[0, 0, 0]) and np.isinf(vol.data[1, 1, 1])


def test_5d_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2, 2), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    with pytest.raises(MedSegIOError, match=r"v.nii.gz: 5-D data"):
        io.read_nifti(tmp_path / "v.nii.gz")


def test_5d_with_singletons_is_3d(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 1, 1), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    assert io.read_nifti(tmp_path / "v.nii.gz").data.shape == (3, 4, 5)


def test_writer_refuses_shape_mismatch_and_writes_nothing(volumes, tmp_path):
    ref = io.read_nifti(volumes / "ct-spleen-crop.nii.gz")
    out = tmp_path / "bad_seg.nii.gz"
    with pytest.raises(MedSegIOError, match=r"bad_seg.nii.gz: array shape \(10, 10, 10\) does not match"):
        io.write_nifti(out, np.zeros((10, 10, 10), np.uint8), reference=ref, kind="labels")
    assert list(tmp_path.iterdir()) == []


def test_writer_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"previous good file")

    def crash(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("disk died")

    monkeypatch.setattr(nib, "save", crash)
    with pytest.raises(RuntimeError):
        io.write_nifti(out, np.zeros((2, 2, 2), np.uint8), np.eye(4), kind="labels")
    assert out.read_bytes() == b"previous good file"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


def test_label_writer_rejects_fractions(tmp_path):
    with pytest.raises(MedSegIOError, match="whole numbers"):
        io.write_nifti(tmp_path / "x.nii.gz", np.full((2, 2, 2), 0.5), np.eye(4), kind="labels")


def test_no_warning_on_clean_file(volumes):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        io.read_nifti(volumes / "ct-abdomen-small.nii.gz")
