"""Compressed DICOM: the GIL-free imagecodecs path gives exactly pydicom's stored values and SimpleITK's
(GDCM's) voxels, for every compressed transfer syntax it takes; cases it must not take go to pydicom."""

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from napari_medseg import io
from napari_medseg.io import dicom

import imagecodecs  # a core dependency: a broken install fails here, it is not skipped
import SimpleITK as sitk  # the testing extra's reference reader

CT = "ct-dicom-series-jpeg2000"


def sitk_volume(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute()).transpose(2, 1, 0)  # (k, row, col) -> (i, j, k)


def read_with_pydicom_decoder(folder, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(dicom, "_decode_released", lambda ds: None)
        return io.read_dicom(folder)[0].data


def count_fast_decodes(monkeypatch) -> list:
    taken = []
    real = dicom._decode_released

    def counting(ds):
        arr = real(ds)
        taken.append(arr is not None)
        return arr

    monkeypatch.setattr(dicom, "_decode_released", counting)
    return taken


def test_ct_jpeg2000_series_same_voxels_three_ways(volumes, monkeypatch):
    old = read_with_pydicom_decoder(volumes / CT, monkeypatch)
    taken = count_fast_decodes(monkeypatch)
    [vol] = io.read_dicom(volumes / CT)
    assert len(taken) == 20 and all(taken)  # every slice went through imagecodecs
    np.testing.assert_array_equal(vol.data, old)
    np.testing.assert_array_equal(vol.data, sitk_volume(volumes / CT))
    assert vol.data.dtype == old.dtype


def write_series(folder, template, slices, syntax, encode):
    """A series of ``slices`` (k, rows, cols) compressed with ``encode`` under transfer syntax ``syntax``."""
    ds = pydicom.dcmread(template)
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = slices.shape[1:]
    signed = slices.dtype.kind == "i"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = 1, (0 if signed else -1024)
    ds.file_meta.TransferSyntaxUID = syntax
    for k, arr in enumerate(slices):
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-40.0, -30.0, 2.5 * k]
        ds.PixelData = encapsulate([encode(arr)])
        ds["PixelData"].VR = "OB"
        ds.save_as(folder / f"s{k:02d}.dcm", enforce_file_format=True)
    return folder


CASES = {  # name: (transfer syntax, dtype, encoder)
    "jpeg2000-signed": ("1.2.840.10008.1.2.4.90", np.int16, lambda a: imagecodecs.jpeg2k_encode(a, level=0)),
    "jpeg2000-unsigned": ("1.2.840.10008.1.2.4.90", np.uint16, lambda a: imagecodecs.jpeg2k_encode(a, level=0)),
    "jpeg-ls": ("1.2.840.10008.1.2.4.80", np.uint16, lambda a: imagecodecs.jpegls_encode(a)),
    "jpeg-lossless-sv1": ("1.2.840.10008.1.2.4.70", np.uint16, lambda a: imagecodecs.ljpeg_encode(a)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compressed_syntaxes_match_pydicom_and_simpleitk(case, volumes, tmp_path, monkeypatch):
    syntax, dtype, encode = CASES[case]
    rng = np.random.default_rng(3)
    lo = -1024 if dtype == np.int16 else 0
    slices = rng.integers(lo, lo + 3000, (9, 40, 56)).astype(dtype)  # 9 slices: the threaded path
    folder = write_series(tmp_path, sorted((volumes / CT).iterdir())[0], slices, syntax, encode)
    old = read_with_pydicom_decoder(folder, monkeypatch)
    taken = count_fast_decodes(monkeypatch)
    [vol] = io.read_dicom(folder)
    assert len(taken) == 9 and all(taken)
    np.testing.assert_array_equal(vol.data, old)
    np.testing.assert_array_equal(vol.data, sitk_volume(folder))
    offset = 0 if dtype == np.int16 else -1024
    np.testing.assert_array_equal(vol.data.transpose(2, 1, 0), slices.astype(np.int32) + offset)


def test_sign_mismatch_goes_to_pydicom(volumes, tmp_path, monkeypatch):
    """An unsigned J2K codestream in a PixelRepresentation=1 header: pydicom reinterprets the sign, so
    the fast path must step aside and the reader must give pydicom's values."""
    slices = np.random.default_rng(4).integers(0, 3000, (2, 32, 32)).astype(np.uint16)
    folder = write_series(tmp_path, sorted((volumes / CT).iterdir())[0], slices, "1.2.840.10008.1.2.4.90",
                          lambda a: imagecodecs.jpeg2k_encode(a, level=0))
    for f in folder.iterdir():  # header says signed
        ds = pydicom.dcmread(f)
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 12, 11
        ds.save_as(f, enforce_file_format=True)
    ds = pydicom.dcmread(next(folder.iterdir()))
    assert dicom._decode_released(ds) is None
    [vol] = io.read_dicom(folder)
    np.testing.assert_array_equal(vol.data, read_with_pydicom_decoder(folder, monkeypatch))


def test_truncated_codestream_is_an_error_not_a_partial_image(volumes, tmp_path):
    ds = pydicom.dcmread(sorted((volumes / CT).iterdir())[0])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    assert dicom._decode_released(ds) is None  # imagecodecs refuses it; pydicom then reports it
