"""Disc points <-> a DICOM Structured Report (Comprehensive 3D SR, TID 1500 measurement report), with
highdicom.

One planar-ROI measurement group per disc: a 3D POINT (patient LPS millimetres, in the source series'
frame of reference), the disc's name as tracking identifier, its level coded as finding type and finding
site (SNOMED CT "Level of L4/L5 intervertebral disc" ...; a level without a code gets "Spine"), and the
model's confidence as a measurement (unit 1); a disc's flag travels in the group's "Activity Session"
text (``flag: ...``), the template's one free-text item (our choice). The report references the source series (evidence) and names the
algorithm. :func:`read_sr` gives the same :class:`DiscPoints` back (world RAS, names, confidences, flags).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import MedSegIOError
from .disc_points import Disc, DiscPoints, disc_name, disc_number
from .volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
CONFIDENCE = ("napari-medseg", "confidence")  # private code: the model's heatmap peak (0-1)


def level_code(number: int):
    """SNOMED CT code of a disc level ("Level of L4/L5 intervertebral disc"), else "Spine"."""
    from pydicom.sr.codedict import codes

    key = "LevelOf" + disc_name(number).replace("/", "") + "IntervertebralDisc"
    try:
        return getattr(codes.SCT, key)
    except AttributeError:
        return codes.SCT.Spine


def _confidence_code():
    from pydicom.sr.coding import Code

    return Code("confidence", "99NAPARIMEDSEG", "Disc heatmap confidence")


def write_sr(path: str | Path, points: DiscPoints, source: Volume, *, algorithm: dict | None = None) -> Path:
    """Write ``points`` (world RAS mm, on ``source``'s DICOM series) as a TID 1500 SR referencing it."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .dicom_seg import source_datasets

    path = Path(path)
    if not len(points):
        raise MedSegIOError(path, "no disc to report (nothing written)")
    datasets, _notes = source_datasets(source)
    frame_uid = str(datasets[0].FrameOfReferenceUID)
    algo = None
    if algorithm:
        algo = hd.sr.AlgorithmIdentification(name=str(algorithm.get("name", "napari-medseg")),
                                             version=str(algorithm.get("version", "")) or "unknown")
    groups = []
    for d in points.discs:
        lps = LPS_TO_RAS @ np.asarray(d.world, dtype=float)
        region = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT, graphic_data=lps[None, :],
                                     frame_of_reference_uid=frame_uid)
        code = level_code(d.number)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=d.name),
            referenced_region=region, finding_type=code, finding_sites=[hd.sr.FindingSite(code)],
            algorithm_id=algo, session=(f"flag: {d.flag}" if d.flag else None),
            measurements=[hd.sr.Measurement(name=_confidence_code(), value=float(d.confidence),
                                            unit=codes.UCUM.NoUnits)]))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=str((algorithm or {}).get("name", "napari-medseg"))))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.MRIOfSpine if hasattr(codes.LN, "MRIOfSpine") else codes.SCT.Spine,
        imaging_measurements=groups)
    try:
        with warnings.catch_warnings():  # the source's patient name is what it is: not ours to judge
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            sr = _report(hd, datasets, report)
    except (ValueError, TypeError, AttributeError) as err:
        raise MedSegIOError(path, f"cannot build a DICOM SR on {source.name}: {str(err).splitlines()[0]}") from err
    from .atomic import atomic_path

    with atomic_path(path) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return path


def _report(hd, datasets, report):
    """The Comprehensive 3D SR holding ``report``, its evidence the source series ``datasets``."""
    return hd.sr.Comprehensive3DSR(evidence=datasets, content=report, series_instance_uid=hd.UID(),
                                   series_number=int(datasets[0].get("SeriesNumber") or 0) + 2000,
                                   sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-medseg",
                                   series_description="intervertebral discs")


def is_sr(ds) -> bool:
    return str(ds.get("Modality", "")) == "SR"


def read_sr(path: str | Path) -> DiscPoints:
    """The discs of a report written by :func:`write_sr` (or any TID 1500 report whose planar ROI groups
    hold 3D points named by disc, e.g. "L4/L5"), as world RAS points."""
    import highdicom as hd

    path = Path(path)
    try:
        sr = hd.sr.srread(path)
    except Exception as err:  # noqa: BLE001 - pydicom/highdicom raise many types for a broken SR
        raise MedSegIOError(path, f"not a readable DICOM SR ({err.__class__.__name__}: {str(err).splitlines()[0]})") from err
    try:
        groups = sr.content.get_planar_roi_measurement_groups()
    except (AttributeError, ValueError) as err:
        raise MedSegIOError(path, "this SR holds no TID 1500 measurement report") from err
    discs = []
    for g in groups:
        region = g.roi
        if region is None or str(getattr(region, "graphic_type", "")).split(".")[-1] != "POINT":
            continue
        xyz = np.asarray(region.value, dtype=float).reshape(-1, 3)[0]
        try:
            number = disc_number(str(g.tracking_identifier))
        except ValueError:
            continue
        conf = 1.0
        for m in g.get_measurements():
            if m.name.value == "confidence":
                conf = float(m.value)
        flag = ""
        for item in g[0].ContentSequence:  # the group container's items
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == "Activity Session":
                text = str(item.TextValue)
                flag = text[len("flag: "):] if text.startswith("flag: ") else ""
        discs.append(Disc(number, tuple(float(v) for v in LPS_TO_RAS @ xyz), conf, None, flag))
    if not discs:
        raise MedSegIOError(path, "this SR holds no disc points (3D POINT regions named like 'L4/L5')")
    return DiscPoints(sorted(discs, key=lambda d: d.number), None, None, str(path))
