import random
import shutil
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest

from napari_medseg import io
from napari_medseg.io.errors import MedSegIOError, MedSegIOWarning

CT = "ct-dicom-series-jpeg2000"
SIEMENS = "mr-dicom-series-siemens"
PHILIPS = "mr-dicom-series-philips"


def canonical(data, affine):
    """Reorient (data, affine) to the closest RAS axes, the way nibabel does."""
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data), affine))
    return np.asarray(img.dataobj), img.affine


def test_siemens_matches_dicom2nifti_reference(volumes):
    [vol] = io.read_dicom(volumes / SIEMENS)
    ref = nib.load(volumes / "mr-dicom-series-siemens_dicom2nifti-reference.nii.gz")
    ours, our_aff = canonical(vol.data, vol.affine)
    theirs, their_aff = canonical(np.asarray(ref.dataobj), ref.affine)
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(our_aff, their_aff, atol=1e-3)
    assert vol.metadata["Modality"] == "MR"


def test_ct_jpeg2000_series_geometry(volumes):
    [vol] = io.read_dicom(volumes / CT)
    assert vol.data.shape == (512, 512, 20)
    assert vol.metadata["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    assert vol.data.dtype == np.int16 and vol.data.min() == -1024  # rescale intercept applied
    assert vol.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    # TotalSegmentator's output of this series was written by dcm2niix: same grid in world space
    seg = nib.load(volumes / "ct-dicom-series-jpeg2000_totalseg-output.nii.gz")
    _, our_aff = canonical(vol.data, vol.affine)
    _, seg_aff = canonical(np.asarray(seg.dataobj), seg.affine)
    np.testing.assert_allclose(our_aff, seg_aff, atol=1e-3)
    assert {"SeriesDescription", "Modality"} <= set(vol.metadata)


def test_lossless_decode_matches_pydicom(volumes):
    [vol] = io.read_dicom(volumes / CT)
    for f in sorted((volumes / CT).iterdir())[:3]:
        ds = pydicom.dcmread(f)
        k = np.argmin([abs(vol.affine[2, 3] + vol.affine[2, 2] * k - float(ds.ImagePositionPatient[2])) for k in range(20)])
        expected = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(vol.data[:, :, k].T, expected)


def test_shuffled_and_renamed_gives_same_volume(volumes, tmp_path):
    [ref] = io.read_dicom(volumes / CT)
    files = sorted((volumes / CT).iterdir())
    rng = random.Random(7)
    rng.shuffle(files)
    for n, f in enumerate(files):
        sub = tmp_path / "mixed" / ("a" if n % 2 else "b") / "deeper"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, sub / f"{rng.randrange(10**6):06d}_{n}.bin")
    [vol] = io.read_dicom(tmp_path / "mixed")
    np.testing.assert_array_equal(vol.data, ref.data)
    np.testing.assert_array_equal(vol.affine, ref.affine)


def test_instance_numbers_are_not_trusted(volumes, tmp_path):
    """Scrambled InstanceNumber must not change the order: position on the normal decides."""
    [ref] = io.read_dicom(volumes / SIEMENS)
    for n, f in enumerate(sorted((volumes / SIEMENS).iterdir())):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = [3, 1, 4, 2][n]
        ds.save_as(tmp_path / f"{n}.dcm")
    [vol] = io.read_dicom(tmp_path)
    np.testing.assert_array_equal(vol.data, ref.data)


def test_two_series_give_two_volumes(volumes, tmp_path):
    shutil.copytree(volumes / CT, tmp_path / "both" / "ct")
    shutil.copytree(volumes / SIEMENS, tmp_path / "both" / "mr")
    vols = io.read_dicom(tmp_path / "both")
    assert sorted(v.data.shape for v in vols) == [(256, 256, 4), (512, 512, 20)]


def test_magnitude_and_phase_are_split(volumes):
    with pytest.warns(MedSegIOWarning, match="mixes image types; opened as 2 separate volumes"):
        vols = io.read_dicom(volumes / PHILIPS)
    assert len(vols) == 2 and all(v.data.shape == (768, 768, 4) for v in vols)
    names = {v.name for v in vols}
    assert any("M" in n for n in names) and any("P" in n for n in names)
    # oblique: the affine keeps the rotation (not axis-aligned)
    lin = vols[0].affine[:3, :3] / np.array(vols[0].spacing)
    assert 0.01 < np.abs(lin - np.round(lin)).max()


def test_mixed_orientation_is_split_with_warning(volumes, tmp_path):
    for n, f in enumerate(sorted((volumes / CT).iterdir())[:6]):
        ds = pydicom.dcmread(f)
        if n >= 3:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
            ds.ImagePositionPatient = [float(n), 0.0, 0.0]
        ds.save_as(tmp_path / f"{n}.dcm")
    with pytest.warns(MedSegIOWarning, match="mixes orientations"):
        vols = io.read_dicom(tmp_path)
    assert sorted(v.data.shape[2] for v in vols) == [3, 3]


def test_missing_middle_slice_is_an_error(volumes, tmp_path):
    files = sorted((volumes / CT).iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    for f in files[:9] + files[10:]:
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(MedSegIOError, match=r"uneven slice step, 4.000 mm between slices 8 and 9 .* step is 2.000 mm \(about 1 missing"):
        io.read_dicom(tmp_path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(MedSegIOError, match=r"no DICOM files found in this folder \(1 files checked\)"):
        io.read_dicom(tmp_path)


def test_single_file_opens_as_2d(volumes):
    f = sorted((volumes / SIEMENS).iterdir())[0]
    [vol] = io.read_dicom(f)
    assert vol.data.shape == (256, 256) and vol.spatial_ndim == 2
    assert vol.metadata["layout"] == "2d"


def test_unreadable_pixel_data(volumes, tmp_path):
    f = sorted((volumes / CT).iterdir())[0]
    ds = pydicom.dcmread(f)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # truncated JPEG 2000 codestream
    ds.save_as(tmp_path / "broken.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MedSegIOError, match=r"broken.dcm: cannot decode pixel data \(transfer syntax 1.2.840.10008.1.2.4.90"):
            io.read_dicom(tmp_path / "broken.dcm")


def test_read_dispatch(volumes):
    assert len(io.read(volumes / CT)) == 1
    with pytest.raises(MedSegIOError, match="unsupported file type"):
        io.read(volumes.parent / "README.md")
