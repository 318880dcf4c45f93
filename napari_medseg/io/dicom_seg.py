"""Labels <-> DICOM Segmentation (SEG) objects, written with highdicom; read back as a labels volume.

Writing (:func:`write_seg`): the labels must lie on a DICOM series read by this package (their ``Volume``
carries the series' files and the same grid); the SEG references that series' SOP instances and frame
of reference, holds one frame per source slice and segment (BINARY by default, the widest viewer
support; FRACTIONAL on request), one segment per non-empty class with coded concepts (SNOMED CT:
``CONCEPTS``, by dataset and class name; a generic "Tissue" for classes of user-trained models) and the
algorithm's identification (model name, package version, weights checksum). Empty classes are left out
and returned, so the caller can say so. Nothing is written unless the whole object could be built.

Reading (:func:`read_seg`): the frames' own plane positions place the segments; when the referenced series
(or any open series on the same grid) is read with it, the labels are put on that series' grid, otherwise
on the SEG's own geometry with a warning. Segment numbers become label values (1 ... n) and segment labels
the class names (``metadata["label_names"]``).

Anonymised series without SOP/series/study UIDs or a frame of reference get deterministic UIDs derived from
their files (said in a warning): the SEG is then consistent with this package's reading of the series,
but a PACS cannot link it to the original images.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from .errors import MedSegIOError, MedSegIOWarning
from .volume import Volume
from .volume import class_names as class_names_for

# (category, type) SNOMED CT codes by (dataset of the model, class name); pydicom's code dictionary names
CONCEPTS = {
    ("kvasir-seg", "polyp"): ("MorphologicallyAbnormalStructure", "PolypOfColon"),
    ("ph2", "lesion"): ("MorphologicallyAbnormalStructure", "SkinLesion"),
    ("isic2016-crops", "lesion"): ("MorphologicallyAbnormalStructure", "SkinLesion"),
    ("acdc", "RV"): ("AnatomicalStructure", "RightVentricle"),
    ("acdc", "Myo"): ("AnatomicalStructure", "LeftVentricleMyocardium"),
    ("acdc", "LV"): ("AnatomicalStructure", "LeftVentricle"),
    # head-and-neck organs at risk (OpenKBP's structure names); a parotid's side is a type modifier
    ("headneck-ct", "Brainstem"): ("AnatomicalStructure", "BrainStem"),
    ("headneck-ct", "SpinalCord"): ("AnatomicalStructure", "SpinalCord"),
    ("headneck-ct", "RightParotid"): ("AnatomicalStructure", "ParotidGland", "Right"),
    ("headneck-ct", "LeftParotid"): ("AnatomicalStructure", "ParotidGland", "Left"),
    ("headneck-ct", "Esophagus"): ("AnatomicalStructure", "Esophagus"),
    ("headneck-ct", "Larynx"): ("AnatomicalStructure", "Larynx"),
    ("headneck-ct", "Mandible"): ("AnatomicalStructure", "Mandible"),
}
GENERIC = ("Tissue", "Tissue")


def concept(dataset: str | None, class_name: str):
    """(category, type, laterality or None) pydicom ``Code`` objects for a class; "Tissue" for classes we
    have no code for. The laterality (SNOMED CT Right / Left) goes into the segment's
    SegmentedPropertyTypeModifierCodeSequence, as DICOM codes a paired organ."""
    from pydicom.sr.codedict import codes

    cat, typ, *side = CONCEPTS.get((dataset or "", class_name), GENERIC)
    return getattr(codes.SCT, cat), getattr(codes.SCT, typ), getattr(codes.SCT, side[0]) if side else None


def _derived_uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["napari-medseg", *parts])


TEXT_VRS = ("AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT")


def _drop_invalid(ds) -> set[str]:
    """Remove from a source header (in memory) the plain attributes whose value is invalid for their VR (a
    Patient's Age "0Y"), so that a SEG or SR copying them stays valid; returns their keywords."""
    import pydicom.config
    from pydicom.valuerep import validate_value

    bad = set()
    for elem in list(ds):  # text values as stored (numbers were parsed already, bytes are not copied)
        if elem.VR not in TEXT_VRS or elem.value in (None, ""):
            continue
        values = elem.value if isinstance(elem.value, (list, tuple, pydicom.multival.MultiValue)) else [elem.value]
        try:
            for v in values:
                validate_value(elem.VR, str(v), pydicom.config.RAISE)
        except (ValueError, TypeError):
            bad.add(elem.keyword or str(elem.tag))
            del ds[elem.tag]
    return bad


def source_datasets(source: Volume) -> tuple[list, list[str]]:
    """The source series' datasets (headers only) in the volume's slice order, with missing UIDs filled
    by derived ones and attributes invalid for their VR left out (both said in the returned notes). A one-line error when ``source`` is not a DICOM series
    read by this package."""
    import pydicom

    from .dicom_common import slice_order

    meta = source.metadata or {}
    files = meta.get("files") or []
    name = source.name
    if meta.get("source_format") != "dicom" or not files:
        raise MedSegIOError(source.path, f"the labels lie on {name}, which is not a DICOM series: a DICOM SEG must "
                                         "reference the series it segments (save as NIfTI instead)")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise MedSegIOError(missing[0], f"a file of the source series {name} is gone; cannot reference it")
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    notes = []
    if not meta.get("multiframe"):  # classic series: in the volume's slice order
        normal = np.cross(*[np.asarray(datasets[0].ImageOrientationPatient, float)[s] for s in (slice(0, 3), slice(3, 6))])
        positions = np.array([np.asarray(d.ImagePositionPatient, float) for d in datasets])
        order, _ = slice_order(positions, normal, name, source.path, files)
        datasets = [datasets[i] for i in order]
        files = [files[i] for i in order]
    fills = {"StudyInstanceUID": "study", "SeriesInstanceUID": "series", "FrameOfReferenceUID": "frame of reference"}
    filled, invalid = set(), set()
    series_key = str(datasets[0].get("SeriesInstanceUID") or "") or hashlib.sha256(
        "".join(sorted(Path(f).name for f in files)).encode()).hexdigest()
    for f, ds in zip(files, datasets):
        if not ds.get("SOPInstanceUID"):
            ds.SOPInstanceUID = _derived_uid("sop", hashlib.sha256(Path(f).read_bytes()).hexdigest())
            filled.add("SOP instance")
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = ds.file_meta.get("MediaStorageSOPClassUID") or "1.2.840.10008.5.1.4.1.1.7"
        for tag, what in fills.items():
            if not ds.get(tag):
                ds[tag] = pydicom.DataElement(tag, "UI", _derived_uid(what, series_key))
                filled.add(what)
        if not ds.get("SliceThickness") and not meta.get("multiframe"):  # the SEG's pixel measures need one
            ds.SliceThickness = round(float(meta.get("slice_step_mm") or 1.0), 6)
        invalid.update(_drop_invalid(ds))
        for tag in ("PatientID", "PatientName", "StudyID", "AccessionNumber", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "PatientBirthDate", "PatientSex"):
            if tag not in ds:
                setattr(ds, tag, None)
    if invalid:
        notes.append(f"{name}: {', '.join(sorted(invalid))} not valid for their DICOM type in the source series: "
                     "left out of what is copied from it")
    if filled:
        notes.append(f"{name} has no {', '.join(sorted(filled))} UID(s): derived ones were used, so a PACS will not "
                     "link this SEG to the original images")
    return datasets, notes


def write_seg(path: str | Path, labels: np.ndarray, source: Volume, *, class_names: list[str] | None = None,
              dataset: str | None = None, algorithm: dict | None = None, fractional: bool = False) -> tuple[Path, list[str]]:
    """Write ``labels`` (file order, on ``source``'s grid) as a DICOM SEG referencing ``source``'s series.

    ``class_names[c]`` names label value ``c`` (0 = background); ``dataset`` picks coded concepts
    (``CONCEPTS``); ``algorithm``: {"name", "version", "weights_sha256"} (absent: a manual segmentation).
    Returns (path, notes): the notes say which classes were empty and left out and which UIDs were derived.
    """
    import highdicom as hd

    path = Path(path)
    labels = np.asarray(labels)
    if labels.shape[:3] != tuple(np.shape(source.data)[:3]) or labels.ndim != 3:
        raise MedSegIOError(path, f"the labels {labels.shape} are not on the grid of series {source.name} "
                                  f"{tuple(np.shape(source.data)[:3])}: a SEG needs one label per source voxel")
    if labels.dtype.kind not in "iub":
        if not np.array_equal(labels, np.round(labels)):
            raise MedSegIOError(path, "labels must be whole class numbers")
        labels = labels.astype(np.int64)
    datasets, notes = source_datasets(source)
    present = [int(c) for c in np.unique(labels) if c > 0]
    k_max = max(present + [len(class_names or []) - 1, 0])
    names = class_names_for(class_names, k_max + 1)
    empty = [names[c] for c in range(1, len(names)) if c not in present]
    if empty:
        notes.append(f"empty class(es) left out of the SEG: {', '.join(empty)}")
    if not present:
        raise MedSegIOError(path, "the labels are empty: a DICOM SEG needs at least one segment (nothing written)")
    descriptions = _segment_descriptions(hd, present, names, dataset, algorithm)
    # label map (frames, rows, cols) in the source's slice order: our (i = column, j = row, k = slice)
    remap = np.zeros(max(present) + 1, np.uint16)
    remap[present] = np.arange(1, len(present) + 1)
    frames = remap[np.clip(labels, 0, max(present))].transpose(2, 1, 0)
    meta = source.metadata or {}
    if meta.get("multiframe"):  # one multi-frame source: frames in its own frame order
        n_src = int(datasets[0].NumberOfFrames)
        full = np.zeros((n_src, *frames.shape[1:]), frames.dtype)
        full[np.asarray(meta["frames"])] = frames
        frames = full
    ref = datasets[0]
    try:
        with warnings.catch_warnings():  # the source's patient name is what it is: not ours to judge
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            seg = _segmentation(hd, datasets, frames, fractional, descriptions, ref, algorithm)
    except (ValueError, TypeError, AttributeError) as err:
        raise MedSegIOError(path, f"cannot build a DICOM SEG on {source.name}: {str(err).splitlines()[0]}") from err
    from .atomic import atomic_path

    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    for n in notes:
        warnings.warn(f"{path.name}: {n}", MedSegIOWarning, stacklevel=2)
    return path, notes


def _segment_descriptions(hd, present: list[int], names: list[str], dataset: str | None, algorithm: dict | None):
    """One highdicom segment description per present class: its coded concept (and laterality), and the
    algorithm that made it (none: a manual segmentation)."""
    from pydicom.sr.codedict import codes

    algo = None
    if algorithm:
        algo = hd.AlgorithmIdentificationSequence(
            name=str(algorithm.get("name", "napari-medseg")), family=codes.cid7162.ArtificialIntelligence,
            version=str(algorithm.get("version", "")), source="napari-medseg",
            parameters={k: str(v) for k, v in algorithm.items() if k not in ("name", "version") and v is not None})
    descriptions = []
    for number, c in enumerate(present, start=1):
        cat, typ, side = concept(dataset, names[c])
        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=names[c][:64], segmented_property_category=cat,
            segmented_property_type=typ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if algo else hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            algorithm_identification=algo)
        if side is not None:  # highdicom has no argument for it: the attribute of the segment item
            from pydicom.sequence import Sequence

            desc.SegmentedPropertyTypeModifierCodeSequence = Sequence([hd.sr.CodedConcept.from_code(side)])
        descriptions.append(desc)
    return descriptions


def _segmentation(hd, datasets, frames, fractional, descriptions, ref, algorithm):
    """The highdicom Segmentation of ``frames`` (frames, rows, cols) on ``datasets``."""
    return hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=int(ref.get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-medseg",
        manufacturer_model_name=str((algorithm or {}).get("name", "napari-medseg")),
        software_versions=str((algorithm or {}).get("version", "")), device_serial_number="0",
        series_description=f"{(algorithm or {}).get('name', 'napari-medseg')} segmentation"[:64],
        omit_empty_frames=False)




def read_seg(f, ds, others: list[Volume] | None = None) -> Volume:
    """A DICOM SEG as a labels volume: on the grid of an open series it fits (the referenced one first),
    else on its own frames' geometry (with a warning)."""
    from .dicom_enhanced import frames, grid_affine, pixel_frames, stacks
    from .dicom_common import series_name, slice_order

    frame_list = frames(f, ds)
    if any(fr.segment is None for fr in frame_list):
        raise MedSegIOError(f, "DICOM SEG frames without a segment number (SegmentIdentificationSequence)")
    pixels = pixel_frames(f, ds)
    fractional = str(ds.get("SegmentationType", "BINARY")) == "FRACTIONAL"
    if fractional:
        pixels = pixels >= (int(ds.get("MaximumFractionalValue", 255) or 255) + 1) // 2
    segments = {int(s.SegmentNumber): str(s.get("SegmentLabel", f"segment {s.SegmentNumber}"))
                for s in ds.SegmentSequence}
    names = ["background"] + [segments.get(n, f"segment {n}") for n in range(1, max(segments) + 1)]
    first = frame_list[0]
    ref_uid = ""
    try:
        ref_uid = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError):
        pass
    target = _fitting_series(frame_list, others or [], ref_uid)
    name = f"{series_name(ds, Path(f).stem)}"
    if target is not None:
        affine, shape = target.affine, tuple(np.shape(target.data)[:3])
        placed_on = target.name
    else:
        groups = stacks(frame_list)
        if len(groups) > 1:
            raise MedSegIOError(f, "DICOM SEG frames in several orientations or stacks: not supported")
        normal = np.cross(first.row_cos, first.col_cos)
        unique = _unique_positions(np.array([fr.position for fr in frame_list]), normal)
        order, _ = slice_order(unique, normal, name, f)
        unique = unique[order]
        affine, shape = grid_affine(first, unique), (int(ds.Columns), int(ds.Rows), len(unique))
        placed_on = None
        warnings.warn(f"{f}: the series this SEG references ({ref_uid or 'unknown'}) is not open; opened on the "
                      "SEG's own geometry", MedSegIOWarning, stacklevel=3)
    inv = np.linalg.inv(affine)
    labels = np.zeros(shape, np.uint16 if len(names) > 255 else np.uint8)
    for fr in frame_list:
        k = _slice_of(fr, inv, shape[2])
        if k is None:
            raise MedSegIOError(f, f"SEG frame {fr.index + 1} does not lie on a slice of {placed_on or 'its grid'}")
        plane = labels[:, :, k]
        plane[pixels[fr.index].T.astype(bool)] = fr.segment
    meta = {"source_format": "dicom-seg", "label_names": names, "ReferencedSeriesInstanceUID": ref_uid,
            "placed_on": placed_on, "layout": "3d", "SegmentationType": "FRACTIONAL" if fractional else "BINARY"}
    for tag in ("SeriesDescription", "SeriesInstanceUID", "Modality"):
        if ds.get(tag):
            meta[tag] = str(ds.get(tag))
    return Volume(data=labels, affine=affine, name=name, kind="labels", path=str(f), metadata=meta)


def _unique_positions(positions: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """One position per slice plane (frames of several segments share them), gaps filled on the lattice
    of the smallest step."""
    proj = positions @ normal
    keep = np.unique(np.round(proj / 1e-3).astype(np.int64), return_index=True)[1]
    pos = positions[keep]
    proj = pos @ normal
    order = np.argsort(proj)
    pos, proj = pos[order], proj[order]
    if len(pos) < 2:
        return pos
    step = float(np.min(np.diff(proj)))
    n = int(round((proj[-1] - proj[0]) / step)) + 1
    direction = (pos[-1] - pos[0]) / (n - 1)
    return np.array([pos[0] + i * direction for i in range(n)])


def _fitting_series(frame_list, volumes: list[Volume], ref_uid: str) -> Volume | None:
    """An open image volume whose grid holds every frame (same in-plane orientation and spacing, frame
    positions on its slices), the referenced series first."""
    from .dicom_common import LPS_TO_RAS

    cands = sorted((v for v in volumes if v.kind == "image" and np.ndim(v.data) == 3),
                   key=lambda v: v.metadata.get("SeriesInstanceUID") != ref_uid)
    fr0 = frame_list[0]
    for v in cands:
        col = LPS_TO_RAS[:3, :3] @ fr0.row_cos * fr0.spacing[1]
        if not np.allclose(v.affine[:3, 0], col, atol=1e-3):
            continue
        inv = np.linalg.inv(v.affine)
        if all(_slice_of(fr, inv, np.shape(v.data)[2]) is not None for fr in frame_list):
            return v
    return None


def _slice_of(fr, inv_affine: np.ndarray, depth: int, tol: float = 1e-2) -> int | None:
    """The slice ``k`` of a grid (its inverse affine, ``depth`` slices) whose first voxel is the frame's
    first pixel, or None when the frame does not lie on one of its slices."""
    from .dicom_common import LPS_TO_RAS

    i, j, k = (inv_affine @ (LPS_TO_RAS @ np.r_[fr.position, 1.0]))[:3]
    n = int(round(k))
    return n if abs(i) < tol and abs(j) < tol and abs(k - n) < tol and 0 <= n < depth else None
