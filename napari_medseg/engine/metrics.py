"""Segmentation metrics (Dice, IoU, HD95 via MONAI, in mm where spacing is known) and the disc
labeling metrics of the MLMI 2021 paper (median L2 in mm, false-negative and false-positive rates)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from ..io.errors import InvalidInput


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, num_classes: int,
                         spacing: tuple[float, ...] | None = None, classes=None) -> dict:
    """Per foreground class: dice, iou, hd95 (mm when ``spacing`` is given, else pixels). ``classes``: score
    only these (partial labels: the classes drawn for the case; an organ not drawn is unknown, so neither
    its Dice nor its Hausdorff distance exists); None: every class 1 ... ``num_classes - 1``."""
    from monai.metrics import compute_hausdorff_distance

    if pred.shape != truth.shape:
        raise InvalidInput(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    out = {"dice": {}, "iou": {}, "hd95": {}}
    for c in range(1, num_classes):
        if classes is not None and c not in classes:
            continue
        p, t = pred == c, truth == c
        inter, ps, ts = np.logical_and(p, t).sum(), p.sum(), t.sum()
        union = ps + ts - inter
        out["dice"][c] = 1.0 if ps + ts == 0 else float(2 * inter / (ps + ts))
        out["iou"][c] = 1.0 if union == 0 else float(inter / union)
        if ps == 0 or ts == 0:
            out["hd95"][c] = 0.0 if ps == ts == 0 else float("nan")
            continue
        pt = torch.as_tensor(p[None, None])
        tt = torch.as_tensor(t[None, None])
        with warnings.catch_warnings():  # only MONAI's deprecation notice about its own internal call
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            hd = compute_hausdorff_distance(pt, tt, percentile=95, spacing=list(spacing) if spacing else None)
        out["hd95"][c] = float(hd.item())
    for k in ("dice", "iou", "hd95"):
        vals = [v for v in out[k].values() if np.isfinite(v)]
        out[f"{k}_mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


def disc_metrics(pred_rc: dict[int, np.ndarray], true_rc: dict[int, np.ndarray], spacing_rc: tuple[float, float],
                 fn_px: float = 7.0, fp_px: float = 10.0, pred_xyz: dict | None = None,
                 true_xyz: dict | None = None) -> dict:
    """Disc positions in the sagittal plane, keyed by SCT number, as (row = along the spine, col) pixels.

    * L2: distance between a true disc and the prediction with the same number, in mm.
    * false negative (a miss): a true disc with no prediction of its number within ``fn_px`` along the
      spine axis.
    * false positive: a prediction whose nearest true disc is more than ``fp_px`` away. Only the levels the
      case labels are known (ours: a case labelled L1/L2 ... L4/L5 still shows its L5/S1 disc), so a
      prediction at a level the case does not label counts as a false positive only when it sits on a
      labelled disc (within ``fp_px``: a wrong name); otherwise it is ``unscored``.
    * ``shift``: the median level difference between predictions and the labelled disc each sits on
      (within ``fp_px``): 0 when the numbering holds, +-1 when the scan is numbered a level off.
    * ``per_level``: number -> {"l2_mm", "miss"} for each true disc (and "l2_3d_mm").
    * given world positions (mm) of the same discs, ``l2_3d_all_mm``: the 3-D distance between each true
      disc and the prediction of its number (the sagittal-plane L2 ignores left-right).
    Rates are over the number of true discs."""
    sp = np.asarray(spacing_rc, dtype=float)
    dists, fn, fp, unscored, per_level = [], 0, 0, 0, {}
    for n, t in true_rc.items():
        p = pred_rc.get(n)
        miss = bool(p is None or abs(p[0] - t[0]) > fn_px)
        fn += miss
        d = None if p is None else float(np.linalg.norm((np.asarray(p) - np.asarray(t)) * sp))
        if d is not None:
            dists.append(d)
        per_level[int(n)] = {"l2_mm": d, "miss": bool(miss)}
        if pred_xyz is not None and true_xyz is not None:
            d3 = None if n not in pred_xyz else float(np.linalg.norm(np.asarray(pred_xyz[n], float)
                                                                     - np.asarray(true_xyz[n], float)))
            per_level[int(n)]["l2_3d_mm"] = d3
    numbers = list(true_rc)
    truths = np.array(list(true_rc.values()), dtype=float).reshape(-1, 2)
    diffs = []
    for n, p in pred_rc.items():
        dist = np.linalg.norm(truths - np.asarray(p, dtype=float), axis=1) if len(truths) else np.zeros(0)
        on = int(np.argmin(dist)) if len(dist) and dist.min() <= fp_px else None
        if on is not None:
            diffs.append(int(n) - int(numbers[on]))
        if n in true_rc:
            fp += int(on is None)
        elif on is not None:
            fp += 1  # an unlabelled level's name on a labelled disc
        else:
            unscored += 1
    n_true = max(1, len(true_rc))
    d3 = [r["l2_3d_mm"] for r in per_level.values() if r.get("l2_3d_mm") is not None]
    return {"l2_mm": float(np.median(dists)) if dists else float("nan"), "l2_all_mm": dists, "l2_3d_all_mm": d3,
            "fn": fn, "fp": fp, "unscored": unscored, "n_true": len(true_rc), "n_pred": len(pred_rc),
            "fnr": fn / n_true, "fpr": fp / n_true, "shift": int(np.median(diffs)) if diffs else None,
            "per_level": per_level}


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Voxels per class (``np.bincount`` of the labels, at least ``num_classes`` long) without the 8-byte
    index copy bincount makes of a uint8 volume (630 MB for a 300-slice 512x512 CT): one comparison per
    class over the labels in memory order."""
    flat = np.asarray(labels).ravel(order="K")
    k = max(int(num_classes), int(flat.max()) + 1 if flat.size else 0)
    return np.array([np.count_nonzero(flat == c) for c in range(k)], dtype=np.int64)
