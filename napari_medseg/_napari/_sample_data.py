"""napari sample-data contributions (File > Open Sample > napari-medseg)."""

from __future__ import annotations

import numpy as np

from ..io import datasets, read_image2d
from ._layers import sagittal_once_added
from ._reader import read_layers


def skin_lesion():
    """A dermoscopy image (ISIC 2016 test set, CC-0) with its lesion mask, shipped inside the package: the
    domain of the bundled skin models (``unet-ph2``, ``bcdunet-ph2``); works offline."""
    img = read_image2d(datasets.fetch("skin"))
    mask = read_image2d(datasets.fetch("skin_mask"), kind="labels")
    labels = (np.asarray(mask.data) > 127).astype(np.uint8)
    return [
        (img.data, {"name": img.name, "rgb": True}, "image"),
        (labels, {"name": f"{img.name}_mask", "features": {"class": ["background", "lesion"]}}, "labels"),
    ]


def ct_dicom_series():
    """Abdominal CT, 20 slices of 512x512, JPEG 2000 lossless DICOM (TotalSegmentator test data)."""
    return read_layers(str(datasets.fetch("ct_dicom")))


def ct_abdomen():
    """Abdominal CT at 3 mm with TotalSegmentator's segmentation of it (not a manual label)."""
    return read_layers(str(datasets.fetch("ct_abdomen"))) + read_layers(str(datasets.fetch("ct_abdomen_seg")))


def mr_spine_discs():
    """PAM50 T2 spinal-cord template (SCT testing data) with its 18 intervertebral disc points."""
    return read_layers(str(datasets.fetch("mr_spine"))) + read_layers(str(datasets.fetch("mr_spine_discs")))


def mr_lumbar_discs():
    """A sagittal lumbar MRI of the multi-site set (spine-discs test case spine_vb1_16) with its 7 disc points,
    T11/T12 ... L5/S1: what the bundled ``hourglass-spine-discs`` model was trained for (a scan it did not
    train on). A curated file: read from $NAPARI_MEDSEG_DATA_DIR. Opens on the sagittal plane, as it was
    acquired."""
    layers = read_layers(str(datasets.fetch("mr_lumbar"))) + read_layers(str(datasets.fetch("mr_lumbar_discs")))
    sagittal_once_added(_current_viewer())
    return layers


def _current_viewer():
    try:
        import napari

        return napari.current_viewer()
    except Exception:  # no viewer (a script calling the sample function): nothing to show
        return None


def mr_cardiac():
    """A short-axis cine cardiac MRI (ACDC test case, end-diastole) with its manual labels (RV, myocardium,
    LV): what the bundled cardiac models were trained for. A curated file: read from $NAPARI_MEDSEG_DATA_DIR."""
    image = read_layers(str(datasets.fetch("mr_cardiac")))
    labels = read_layers(str(datasets.fetch("mr_cardiac_labels")))
    for _data, kwargs, _kind in labels:
        kwargs["name"] = kwargs.get("name", "labels") + "_manual"
        kwargs["features"] = {"index": [0, 1, 2, 3], "class": ["background", "RV", "Myo", "LV"]}
    return image + [(d, k, "labels") for d, k, _ in labels]


def endoscopy_polyp():
    """A colonoscopy image from the Kvasir-SEG test split with its polyp mask."""
    img = read_image2d(datasets.fetch("endoscopy"))
    mask = read_image2d(datasets.fetch("endoscopy_mask"), kind="labels")
    m = mask.data if mask.data.ndim == 2 else mask.data[..., 0]
    labels = (m > 127).astype(np.uint8)  # Kvasir masks are stored as JPEG: threshold at 127
    return [
        (img.data, {"name": img.name, "rgb": True}, "image"),
        (labels, {"name": f"{img.name}_mask", "features": {"class": ["background", "polyp"]}}, "labels"),
    ]
