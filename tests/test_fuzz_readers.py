"""Corrupt files: thousands of byte mutations of real NIfTI and DICOM files either read or give the one-line
``MedSegIOError`` naming the file, never another exception (nibabel's KeyError, pydicom's NotImplementedError,
BytesLengthException ... raised at read time or when an element is first touched)."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medseg import io
from napari_medseg.io.errors import MedSegIOError

N = 2000  # mutations per format: 4,000 files, about 10 s


def _mutants(data: bytes, rng: random.Random, span: int) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        i = rng.randrange(min(span, len(b)))
        b[i] = rng.randrange(256) if rng.random() < 0.7 else b[i] ^ (1 << rng.randrange(8))
    return bytes(b)


def _fuzz(src: bytes, name: str, tmp_path: Path, span: int, read, seed: int) -> dict:
    rng = random.Random(seed)
    outcome = {"read": 0, "refused": 0}
    target = tmp_path / name
    for k in range(N):
        target.write_bytes(_mutants(src, rng, span))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                read(target)
                outcome["read"] += 1
            except MedSegIOError as err:
                assert "\n" not in str(err) and str(target) in str(err), str(err)
                outcome["refused"] += 1
            except Exception as err:  # noqa: BLE001 - what the test is for
                pytest.fail(f"mutation {k} escaped as {type(err).__name__}: {err}")
    return outcome


def test_mutated_nifti_headers_read_or_refuse_in_one_line(volumes, tmp_path):
    img = nib.load(volumes / "spine-t2-crop.nii.gz")
    plain = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:20, :20, :10], img.affine, img.header), plain)
    out = _fuzz(plain.read_bytes(), "mutant.nii", tmp_path, 352, lambda p: io.read_nifti(p), seed=1)
    assert out["read"] > 0 and out["refused"] > 0, out  # both outcomes occur: the test exercises both paths


def test_mutated_dicom_files_read_or_refuse_in_one_line(volumes, tmp_path):
    src = sorted((volumes / "mr-dicom-series-siemens").iterdir())[0].read_bytes()
    out = _fuzz(src, "mutant.dcm", tmp_path, 2048, lambda p: io.read(p), seed=2)
    assert out["read"] > 0 and out["refused"] > 0, out
