"""DICOM series read time: napari-medseg vs SimpleITK's ImageSeriesReader, same script, same files.

    NAPARI_MEDSEG_DATA_DIR=../shared/data .venv/bin/python benchmarks/io_read.py [--repeats 7]

Reports the median of N timed reads (after one warm-up read) and the ratio ours / SimpleITK, for the
20-slice JPEG 2000 CT series of the shared data, a 300-slice JPEG 2000 series made from it (its 20
compressed slices repeated at new positions: real CT codestreams, untouched), and a synthetic 300-slice
uncompressed 512x512 series. For the JPEG 2000 series it also times our reader with the imagecodecs path
switched off (pydicom's pylibjpeg plugin, the previous decoder), in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_medseg import io

try:
    from _timing import median_time
except ImportError:  # run as a module
    from benchmarks._timing import median_time


def make_series(folder: Path, template: Path, n: int = 300) -> Path:
    ds = pydicom.dcmread(template)
    rng = np.random.default_rng(0)
    series_uid = generate_uid()
    ds.Rows, ds.Columns = 512, 512
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.SeriesInstanceUID = series_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    order = rng.permutation(n)
    for k in range(n):
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImagePositionPatient = [-180.0, -180.0, 1.25 * k]
        ds.PixelData = rng.integers(0, 2000, (512, 512), dtype=np.int16).tobytes()
        ds.save_as(folder / f"slice_{order[k]:04d}.dcm", enforce_file_format=True)
    return folder


def tile_series(folder: Path, source: Path, n: int = 300) -> Path:
    """``n`` slices whose compressed pixel data are the source series' own, cycled, 1.25 mm apart."""
    slices = [pydicom.dcmread(f) for f in sorted(source.iterdir())]
    series_uid = generate_uid()
    for k in range(n):
        ds = slices[k % len(slices)]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-180.0, -180.0, 1.25 * k]
        ds.save_as(folder / f"slice_{k:04d}.dcm", enforce_file_format=True)
    return folder


def sitk_read(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def ours(folder: Path):
    return io.read_dicom(folder)[0].data


def ours_pydicom_decoder(folder: Path):
    from napari_medseg.io import dicom

    fast, dicom._decode_released = dicom._decode_released, lambda ds: None
    try:
        return io.read_dicom(folder)[0].data
    finally:
        dicom._decode_released = fast


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    data = Path(os.environ.get("NAPARI_MEDSEG_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    j2k = data / "volumes" / "ct-dicom-series-jpeg2000"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "u").mkdir()
        (Path(tmp) / "j").mkdir()
        synth = make_series(Path(tmp) / "u", sorted((data / "volumes" / "mr-dicom-series-siemens").iterdir())[0])
        j2k300 = tile_series(Path(tmp) / "j", j2k)
        for name, folder in [("ct-jpeg2000-20-slices", j2k), ("ct-jpeg2000-300-slices", j2k300),
                             ("synthetic-uncompressed-300-slices", synth)]:
            a, b = ours(folder), sitk_read(folder)
            assert np.array_equal(a.transpose(2, 1, 0), b), "readers disagree on voxel values"
            t_ours, t_sitk = median_time(lambda: ours(folder), args.repeats), median_time(lambda: sitk_read(folder), args.repeats)
            row = {"ours_s": round(t_ours, 4), "simpleitk_s": round(t_sitk, 4), "ratio": round(t_ours / t_sitk, 2)}
            line = f"{name:36s} ours {t_ours * 1e3:8.1f} ms  SimpleITK {t_sitk * 1e3:8.1f} ms  ratio {t_ours / t_sitk:5.2f}"
            if "jpeg2000" in name:
                assert np.array_equal(ours_pydicom_decoder(folder), a), "decoders disagree on voxel values"
                t_old = median_time(lambda: ours_pydicom_decoder(folder), args.repeats)
                row.update(pydicom_decoder_s=round(t_old, 4), pydicom_decoder_ratio=round(t_old / t_sitk, 2))
                line += f"  (pydicom decoder {t_old * 1e3:8.1f} ms, ratio {t_old / t_sitk:5.2f})"
            results[name] = row
            print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
