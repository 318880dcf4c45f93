"""DICOM in and out: enhanced multi-frame images, DICOM SEG (written with highdicom, read back by highdicom,
by dcmqi's segimage2itkimage and by us) and disc points as a DICOM SR, on the shared CT and MR series."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from napari_medseg import io
from napari_medseg.io.dicom_seg import write_seg
from napari_medseg.io.errors import MedSegIOError, MedSegIOWarning

# the shared series are anonymised (no UIDs or frame of reference): every SEG/SR on them says that derived
# UIDs were used; that warning is expected here, and asserted once in the first test
pytestmark = pytest.mark.filterwarnings("ignore:.*derived ones were used:napari_medseg.io.errors.MedSegIOWarning")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CT = "volumes/ct-dicom-series-jpeg2000"
PHILIPS = "volumes/mr-dicom-series-philips"  # oblique, magnitude and phase images in one series
SIEMENS = "volumes/mr-dicom-series-siemens"


def _series(shared, rel) -> io.Volume:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedSegIOWarning)  # the Philips series is two images: said, expected
        return io.read(shared / rel)[0]


def _labels(shape) -> np.ndarray:
    """Three classes, class 2 empty (so it is left out), blocks that touch the grid's edges."""
    lab = np.zeros(shape, np.uint8)
    i, j, k = shape
    lab[i // 4:i // 2, j // 5:j // 2, : max(1, k // 2)] = 1
    lab[i // 2:i // 2 + 30, j // 2:j - 1, k // 2:] = 3
    lab[0:5, 0:7, 0] = 1
    return lab


def _on_our_grid(array: np.ndarray, affine_lps: np.ndarray, ours: io.Volume) -> np.ndarray:
    """A (slice, row, col) array with an LPS affine (highdicom's volume) in our (i, j, k) order; the index
    map between the two grids must be a signed permutation (exact), which the test asserts."""
    m = np.linalg.inv(ours.affine) @ LPS_TO_RAS @ affine_lps
    perm = np.round(m[:3, :3])
    np.testing.assert_allclose(m[:3, :3], perm, atol=1e-4)
    np.testing.assert_allclose(m[:3, 3], np.round(m[:3, 3]), atol=1e-3)
    out = np.zeros(np.shape(ours.data)[:3], array.dtype)
    idx = np.indices(array.shape).reshape(3, -1)
    ijk = np.round(perm @ idx + m[:3, 3:4]).astype(int)
    out[tuple(ijk)] = array.reshape(-1)
    return out


def _dcmqi(path: Path, out: Path) -> Path:
    """dcmqi's segimage2itkimage on a SEG: one NIfTI per segment and meta.json in ``out``."""
    out.mkdir()
    exe = Path(sys.executable).parent / "segimage2itkimage"
    run = subprocess.run([str(exe), "--inputDICOM", str(path), "--outputDirectory", str(out), "-t", "nifti"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-500:]
    return out


@pytest.mark.parametrize("rel", [CT, PHILIPS])
def test_seg_reads_back_the_same_in_highdicom_dcmqi_and_us(shared, tmp_path, rel):
    import highdicom as hd

    vol = _series(shared, rel)
    lab = _labels(np.shape(vol.data)[:3])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        path, notes = write_seg(tmp_path / "seg.dcm", lab, vol, class_names=["background", "RV", "Myo", "LV"],
                                dataset="acdc", algorithm={"name": "unet-acdc-300", "version": "0.1.0",
                                                           "weights_sha256": "ab" * 32})
    assert any("Myo" in n for n in notes)
    messages = [str(w.message) for w in said if issubclass(w.category, MedSegIOWarning)]
    assert any("empty class(es) left out of the SEG: Myo" in m for m in messages)
    assert any("derived ones were used" in m for m in messages)  # both shared series lack some UIDs
    expected = np.where(lab == 3, 2, lab)  # segments 1 ... n: RV, LV (the empty Myo left out)
    ds = pydicom.dcmread(path)
    assert ds.SegmentationType == "BINARY" and [s.SegmentLabel for s in ds.SegmentSequence] == ["RV", "LV"]
    assert ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "87878005"  # left ventricle
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "unet-acdc-300" and "ab" * 32 in str(algo.AlgorithmParameters)
    # highdicom
    seg = hd.seg.segread(path)
    hv = seg.get_volume(combine_segments=True)
    np.testing.assert_array_equal(_on_our_grid(np.asarray(hv.array), hv.affine, vol), expected)
    # dcmqi: one NIfTI per segment, on the series' geometry
    out = _dcmqi(path, tmp_path / "dcmqi")
    ours_nifti = io.read_nifti(io.write_nifti(tmp_path / "seg.nii.gz", expected, reference=vol, kind="labels"))
    for number in (1, 2):
        img = nib.load(out / f"{number}.nii.gz")
        np.testing.assert_allclose(img.affine, ours_nifti.affine, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(img.dataobj) > 0, np.asarray(ours_nifti.data) == number)
    # us: alone (own geometry, with a warning), and beside its series (placed on it)
    with pytest.warns(MedSegIOWarning, match="not open"):
        alone = io.read(path)[0]
    assert alone.kind == "labels" and alone.metadata["label_names"] == ["background", "RV", "LV"]
    np.testing.assert_array_equal(alone.data, expected)
    np.testing.assert_allclose(alone.affine, vol.affine, atol=1e-6)
    both = tmp_path / "study"
    shutil.copytree(shared / rel, both / "series")
    shutil.copy(path, both / "seg.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedSegIOWarning)
        vols = io.read(both)
    placed = [v for v in vols if v.kind == "labels"][0]
    assert placed.metadata["placed_on"] == vol.name
    np.testing.assert_array_equal(placed.data, expected)


HEADNECK = ["background", "Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible"]


def test_head_and_neck_organs_are_coded_with_their_side_and_dcmqi_reads_the_codes(shared, tmp_path):
    """Each organ at risk carries its SNOMED CT concept, which dcmqi reads back; the parotids their side as a
    type modifier (DICOM's way for a paired organ; dcmqi's metadata leaves modifiers out, highdicom and
    pydicom read it)."""
    import highdicom as hd
    import json

    vol = _series(shared, CT)
    shape = np.shape(vol.data)[:3]
    lab = np.zeros(shape, np.uint8)
    for c in range(1, 8):  # a block per organ along the first axis
        lab[c * (shape[0] // 9): (c + 1) * (shape[0] // 9), 10:20, :] = c
    path, _ = write_seg(tmp_path / "seg.dcm", lab, vol, class_names=HEADNECK, dataset="headneck-ct",
                        algorithm={"name": "lstmsa-headneck-ct", "version": "0.1.0"})
    ds = pydicom.dcmread(path)
    codes = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in ds.SegmentSequence}
    assert codes == {"Brainstem": "119238007", "SpinalCord": "2748008", "RightParotid": "45289007",
                     "LeftParotid": "45289007", "Esophagus": "32849002", "Larynx": "4596009", "Mandible": "91609006"}
    sides = {s.SegmentLabel: s.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning
             for s in ds.SegmentSequence if "SegmentedPropertyTypeModifierCodeSequence" in s}
    assert sides == {"RightParotid": "Right", "LeftParotid": "Left"}
    out = _dcmqi(path, tmp_path / "dcmqi")
    meta = json.loads((out / "meta.json").read_text())
    attrs = {a["SegmentLabel"]: a for seg in meta["segmentAttributes"] for a in seg}
    assert attrs["LeftParotid"]["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == "45289007"
    assert attrs["RightParotid"]["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == "45289007"
    seg = hd.seg.segread(path)
    right = seg.get_segment_description(3)
    assert right.SegmentLabel == "RightParotid" and right.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "24028007"
    assert attrs["Mandible"]["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == "91609006"


def _legacy_enhanced(shared, rel, tmp_path) -> Path:
    """An enhanced multi-frame file made from a classic series by highdicom's legacy conversion (UIDs and
    the SOP class filled in on copies where the anonymised series lacks them)."""
    import highdicom as hd

    files = sorted(p for p in (shared / rel).iterdir() if p.is_file())
    dss = [pydicom.dcmread(f) for f in files]
    if not dss[0].get("SOPClassUID"):
        for f, d in zip(files, dss):
            d.SOPClassUID = d.file_meta.MediaStorageSOPClassUID
            d.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[f.name])
            d.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["study"])
            d.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["series"])
            d.decompress()
    cls = hd.legacy.LegacyConvertedEnhancedCTImage if dss[0].Modality == "CT" else hd.legacy.LegacyConvertedEnhancedMRImage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enh = cls(dss, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(), instance_number=1)
    out = tmp_path / f"{Path(rel).name}-enhanced.dcm"
    enh.save_as(out)
    return out


@pytest.mark.parametrize("rel", [CT, PHILIPS, SIEMENS])
def test_an_enhanced_multiframe_file_opens_like_its_classic_series(shared, tmp_path, rel):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedSegIOWarning)
        classic = io.read(shared / rel)
        enhanced = io.read(_legacy_enhanced(shared, rel, tmp_path))
    assert len(enhanced) == len(classic)  # the Philips file holds magnitude and phase frames: two volumes
    for c, e in zip(classic, enhanced):
        assert e.metadata["multiframe"] and e.data.dtype == c.data.dtype
        np.testing.assert_array_equal(np.asarray(e.data), np.asarray(c.data))
        np.testing.assert_allclose(e.affine, c.affine, atol=1e-6)


def test_a_seg_on_an_enhanced_image_references_its_frames(shared, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedSegIOWarning)
        src = io.read(_legacy_enhanced(shared, SIEMENS, tmp_path))[0]
    lab = _labels(src.data.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedSegIOWarning)
        path, _ = write_seg(tmp_path / "seg.dcm", lab, src, class_names=["background", "a", "b", "c"])
        back = io.read(path)[0]
    np.testing.assert_array_equal(back.data, np.where(lab == 3, 2, lab))
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-6)


def test_disc_points_round_trip_through_a_dicom_sr(shared, tmp_path):
    vol = _series(shared, SIEMENS)
    pts = io.DiscPoints.from_voxels(np.array([[100, 120, 1.0], [110, 150, 2.0], [120, 181, 3.0]]), [22, 23, 25],
                                    vol.affine, vol.data.shape, confidences=[0.91, 0.45, 0.8])
    pts.discs[1].flag = "low confidence 0.45"
    path = io.write_points(tmp_path / "scan_discs.dcm", pts, reference=vol,
                           algorithm={"name": "hourglass-spine-discs", "version": "0.1.0"})
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SR" and ds.CurrentRequestedProcedureEvidenceSequence
    assert io.is_sr_file(path)
    back = io.read_points(path)
    assert back.names == ["L2/L3", "L3/L4", "L5/S1"] and back.flags == pts.flags
    np.testing.assert_allclose(back.confidences, pts.confidences, atol=1e-6)
    np.testing.assert_allclose(back.world, pts.world, atol=1e-4)
    with pytest.raises(MedSegIOError, match="structured report"):
        io.read(path)  # points, not an image: the message says where to read it


def test_bad_inputs_get_one_line_and_nothing_written(shared, tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("a text file with a DICOM name\n")
    with pytest.raises(MedSegIOError, match="not a DICOM file"):
        io.read(text)
    text.unlink()
    vol = _series(shared, SIEMENS)
    lab = _labels(vol.data.shape)
    nifti = io.read_nifti(shared / "volumes/ct-abdomen-small.nii.gz")
    with pytest.raises(MedSegIOError, match="not a DICOM series"):
        write_seg(tmp_path / "a.dcm", np.ones(nifti.data.shape, np.uint8), nifti)
    with pytest.raises(MedSegIOError, match="not on the grid"):
        write_seg(tmp_path / "b.dcm", lab[:, :, :3], vol)
    with pytest.raises(MedSegIOError, match="empty"):
        write_seg(tmp_path / "c.dcm", np.zeros_like(lab), vol)
    assert not list(tmp_path.glob("*.dcm")) and not list(tmp_path.glob(".*"))
    # a series with a missing or a duplicated slice is refused when it is read: no SEG can be placed on it
    files = sorted((shared / CT).iterdir())
    gap, dup = tmp_path / "gap", tmp_path / "dup"
    gap.mkdir()
    dup.mkdir()
    for k, f in enumerate(files):
        if k != 10:
            shutil.copy(f, gap / f.name)
        shutil.copy(f, dup / f.name)
    shutil.copy(files[10], dup / "copy-of-slice-10.dcm")
    with pytest.raises(MedSegIOError, match="missing slice"):
        io.read(gap)
    with pytest.raises(MedSegIOError, match="share a position"):
        io.read(dup)


@pytest.mark.filterwarnings("ignore:.*PatientAge not valid for their DICOM type:UserWarning")  # the Siemens series' "0Y", said
def test_predict_and_label_discs_write_dicom(shared, tmp_path):
    from napari_medseg.cli import main

    series = tmp_path / "series"
    shutil.copytree(shared / SIEMENS, series)
    out = tmp_path / "out"
    assert main(["predict", "--model", "unet-acdc-300", str(series), str(shared / "volumes/ct-abdomen-small.nii.gz"),
                 "--out", str(out), "--format", "dicom-seg", "--force"]) == 0
    rows = {Path(r["input"]).name: r for r in __import__("napari_medseg.api", fromlist=["x"]).batch_manifest(out)}
    assert rows["series"]["status"] == "ok" and rows["series"]["outputs"].endswith("series_seg.dcm")
    assert rows["ct-abdomen-small.nii.gz"]["status"] == "skipped" and "needs a DICOM series" in rows[
        "ct-abdomen-small.nii.gz"]["reason"]
    nifti_out = tmp_path / "nifti"
    assert main(["predict", "--model", "unet-acdc-300", str(series), "--out", str(nifti_out), "--force"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedSegIOWarning)
        seg = io.read(out / "series_seg.dcm")[0]
    ref = io.read_nifti(nifti_out / "series_seg.nii.gz")
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-3)
    names = seg.metadata["label_names"]  # segment numbers -> the model's class values, by name
    classes = ["background", "RV", "Myo", "LV"]
    remapped = np.zeros_like(seg.data)
    for n, name in enumerate(names[1:], start=1):
        remapped[seg.data == n] = classes.index(name)
    np.testing.assert_array_equal(remapped, np.asarray(ref.data))
    # dcmqi reads the CLI's SEG back to the NIfTI output's voxels and geometry
    qi = tmp_path / "dcmqi"
    qi.mkdir()
    run = subprocess.run([str(Path(sys.executable).parent / "segimage2itkimage"), "--inputDICOM",
                          str(out / "series_seg.dcm"), "--outputDirectory", str(qi), "-t", "nifti"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-500:]
    for n, name in enumerate(names[1:], start=1):
        img = nib.load(qi / f"{n}.nii.gz")
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(img.dataobj) > 0, np.asarray(ref.data) == classes.index(name))
    ds = pydicom.dcmread(out / "series_seg.dcm")
    params = str(ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters)
    import hashlib

    from napari_medseg.api import bundled_weights

    digest = hashlib.sha256((bundled_weights()["unet-acdc-300"] / "model.safetensors").read_bytes()).hexdigest()
    assert digest in params and ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "unet-acdc-300"


def _as_dicom_series(vol: io.Volume, folder: Path) -> Path:
    """Write a 3-D volume as a classic MR DICOM series (one file per slice along its third axis) whose
    reading gives the same voxels in the same world places: a lumbar DICOM series for the SR test."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    a = vol.affine
    lps = LPS_TO_RAS[:3, :3] @ a[:3, :3]
    dx, dy = np.linalg.norm(lps[:, 0]), np.linalg.norm(lps[:, 1])
    row_cos, col_cos = lps[:, 0] / dx, lps[:, 1] / dy
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    data = np.asarray(vol.data)
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.SeriesNumber, ds.InstanceNumber = "MR", "test", "test^lumbar", 7, k + 1
        ds.ImageOrientationPatient = [float(v) for v in np.r_[row_cos, col_cos]]
        ds.ImagePositionPatient = [float(v) for v in (LPS_TO_RAS @ a @ np.r_[0, 0, k, 1.0])[:3]]
        ds.PixelSpacing = [float(dy), float(dx)]
        ds.SliceThickness = float(np.linalg.norm(a[:3, 2]))
        img = np.ascontiguousarray(data[:, :, k].T).astype(np.uint16)
        ds.Rows, ds.Columns = img.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = img.tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


def test_label_discs_writes_a_dicom_sr_that_reopens_where_the_discs_are(shared, tmp_path):
    from napari_medseg.cli import main

    vol = io.read_nifti(shared / "spine-discs/images/spine_vb1_16.nii.gz")
    series = _as_dicom_series(vol, tmp_path / "lumbar")
    dicom_vol = io.read(series)[0]
    np.testing.assert_array_equal(np.sort(np.asarray(dicom_vol.data).ravel()), np.sort(np.asarray(vol.data).ravel()))
    assert main(["label-discs", str(series), "--out", str(tmp_path / "sr"), "--format", "dicom-sr"]) == 0
    assert main(["label-discs", str(shared / "spine-discs/images/spine_vb1_16.nii.gz"), "--out", str(tmp_path / "csv")]) == 0
    sr = io.read_points(tmp_path / "sr" / "lumbar_discs.dcm")
    ref = io.read_points(tmp_path / "csv" / "spine_vb1_16_discs.csv")
    assert sr.names == ref.names and len(sr) >= 5
    np.testing.assert_allclose(sr.world, ref.world, atol=1e-3)
    assert sr.flags == ref.flags
    ds = pydicom.dcmread(tmp_path / "sr" / "lumbar_discs.dcm")
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID


def test_an_invalid_source_attribute_is_left_out_of_the_seg_and_said(shared, tmp_path):
    """A series whose Patient's Age is "0Y" (AS wants nnnY): copied as it was, a strict validator rejected
    our SEG. Now it is left out, the other patient attributes are kept, and the note says so."""
    vol = io.read_nifti(shared / "spine-discs/images/spine_vb1_16.nii.gz")
    series = _as_dicom_series(io.Volume(np.asarray(vol.data)[::8, ::8], vol.affine @ np.diag([8.0, 8, 1, 1]),
                                        name="small"), tmp_path / "src")
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        with warnings.catch_warnings():  # pydicom says the value is invalid: that is the point
            warnings.simplefilter("ignore", UserWarning)
            ds.PatientAge = "0Y"
        ds.save_as(f)
    src = io.read(series)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MedSegIOWarning)
        path, notes = write_seg(tmp_path / "seg.dcm", (np.asarray(src.data) > np.median(src.data)).astype(np.uint8),
                                src, class_names=["background", "spine"])
    ds = pydicom.dcmread(path)
    assert "PatientAge" not in ds and ds.PatientName == "test^lumbar"
    assert any("PatientAge not valid for their DICOM type" in n for n in notes), notes
