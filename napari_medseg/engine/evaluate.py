"""Evaluate a checkpoint on a dataset's test split at native resolution; JSON as docs/engine.md ("Evaluation") describes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..io.errors import InvalidInput
from .. import io
from . import data as D
from . import preprocess as pp
from .infer import Predictor
from .metrics import disc_metrics, segmentation_metrics


def choose_cases(layout: D.Layout, config: dict, subset: str = "test", split: str = "auto") -> tuple[list[str], str]:
    """The cases to score and a sentence saying which split they come from.

    ``subset``: ``test`` / ``val`` / ``train`` / ``all`` (every case of the folder). ``split``:
    ``auto`` (the checkpoint's own recorded split when it trained on this folder, else the folder's
    ``split.json``, else the seeded split with the training's seed), ``run`` or ``folder`` to force one."""
    if subset == "all":
        return sorted(layout.pairs), "all cases of the folder"
    if subset not in ("train", "val", "test"):
        raise InvalidInput(f"unknown subset {subset!r}: choose test, val, train or all")
    data = config.get("data") or {}
    recorded = data.get("split_stems")
    same_folder = bool(data.get("root")) and Path(data["root"]).resolve() == Path(layout.root).resolve()
    if split not in ("auto", "run", "folder"):
        raise InvalidInput(f"unknown split {split!r}: choose auto, run or folder")
    if split == "run" or (split == "auto" and recorded and same_folder):
        if not recorded:
            raise D.DataError(layout.root, "this checkpoint records no split (trained before splits were kept, or "
                                           "on napari layers): use --split folder")
        stems = list(recorded.get(subset) or [])
        missing = [s for s in stems if s not in layout.pairs]
        if missing:
            raise D.DataError(layout.root, f"{len(missing)} case(s) of the checkpoint's own {subset!r} split are not "
                                           f"in this folder (e.g. {missing[0]}): use --split folder")
        where = "the checkpoint's own split (the cases it was trained and validated without)"
    else:
        seed = int((config.get("training") or {}).get("seed", 0) or 0)
        parts = D.split(layout, seed=seed, require_train=False)
        stems = parts.get(subset) or []
        where = (f"{layout.root / 'split.json'}" if (layout.root / "split.json").is_file()
                 else f"a seeded split of the folder (seed {seed}, the training's)")
    if not stems:
        raise D.DataError(layout.root, f"the split has no {subset!r} cases (use --subset all to score every case)")
    return stems, where


def evaluate(predictor: Predictor, data_dir: str, *, subset: str = "test", max_cases: int | None = None,
             tta: bool = False, callback=None, split: str = "auto", fov_crops: bool = False) -> dict:
    """Score ``predictor`` on a dataset's ``subset``. ``fov_crops`` (disc datasets): also score every case
    cropped as scans of other protocols are (:data:`FOV_CROPS`); each case then says its ``crop`` and the
    result has a summary per crop (``per_crop``) beside the mean over all."""
    layout = D.discover(data_dir)
    stems, where = choose_cases(layout, predictor.config, subset, split)
    stems = stems[:max_cases] if max_cases else stems
    if fov_crops and layout.kind != "discs":
        raise InvalidInput("field-of-view crops are for disc datasets (sagittal spine volumes)")
    if fov_crops:
        return _evaluate_fov(predictor, layout, stems, subset, where, callback)
    cases = []
    for i, stem in enumerate(stems):
        img_path, tgt_path = layout.pairs[stem]
        t0 = time.perf_counter()
        if layout.kind == "discs":
            case = _eval_discs(predictor, img_path, tgt_path)
        elif layout.kind == "seg2d":
            vol = io.read_image2d(img_path, kind="image")
            truth = D.read_mask(tgt_path)
            pred = predictor.segment(vol, tta=tta)
            case = segmentation_metrics(pred, truth, predictor.num_classes)
        else:
            vol = io.read_nifti(img_path, kind="image")
            truth = np.asarray(io.read_nifti(tgt_path, kind="labels").data)
            pred = predictor.segment(vol, tta=tta)
            drawn = None if layout.contoured is None or stem not in layout.contoured else \
                set(layout.contoured[stem]) | ({int(v) for v in np.unique(truth)} - {0})
            case = segmentation_metrics(pred, truth, predictor.num_classes, vol.spacing, classes=drawn)
            if drawn is not None:
                case["contoured"] = sorted(drawn)
        case["stem"] = stem
        case["seconds"] = time.perf_counter() - t0
        cases.append(case)
        if callback:
            from .events import Progress

            callback(Progress(done=i + 1, total=len(stems), item=stem, status="evaluated"))
    return {"subset": subset, "split": where, "cases": [_jsonable(c) for c in cases], "mean": _jsonable(_mean(cases, layout.kind)),
            "model": predictor.config.get("model"), "data": str(layout.root)}


def _eval_discs(predictor: Predictor, img_path, tgt_path) -> dict:
    vol = io.read_nifti(img_path, kind="image")
    return eval_disc_volume(predictor, vol, D.disc_points(tgt_path, vol))


def eval_disc_volume(predictor: Predictor, vol: io.Volume, truth: io.DiscPoints) -> dict:
    """Disc metrics of ``predictor`` on one volume against its reference discs (same geometry): the
    sagittal-plane metrics of :func:`disc_metrics`, the 3-D distances, the predictions and the verdict."""
    pred = predictor.label_discs(vol)
    _, geo = pp.sagittal_view(np.zeros(vol.data.shape[:3], np.float32), vol.affine, 1)
    spacing = vol.spacing
    sp_rc = (spacing[geo["si"]], spacing[geo["ap"]])
    t_rc = dict(zip(truth.numbers, pp.voxel_to_view(truth.voxels(), geo)))
    p_rc = dict(zip(pred.numbers, pp.voxel_to_view(pred.voxels(), geo))) if len(pred) else {}
    out = disc_metrics(p_rc, t_rc, sp_rc, pred_xyz={d.number: d.world for d in pred.discs},
                       true_xyz={d.number: d.world for d in truth.discs})
    out["predicted"] = [{"name": d.name, "confidence": d.confidence, "flag": d.flag} for d in pred.discs]
    out["verdict"] = pred.verdict
    out["levels"] = pred.levels or "ok"  # the doubt about the levels themselves (engine/discs.py)
    out["count"] = pred.count
    return out


# Crops of a sagittal spine scan as scans of other protocols show it (issue: a field of view that reaches
# further into the sacrum, or one without the top): name -> (fraction of the head-feet extent cut from the
# top, square: also cut front and back to a square around the spine, so the view is magnified).
# Since 2026-12-08 three magnified squares (top 25, 35 and 45 % cut: about 1.3x, 1.5x and 1.8x): the one
# square of before let 7 validation scans show no silent shift that the test scans then showed.
FOV_CROPS = {"whole": (0.0, False), "no-top-25": (0.25, False), "no-top-40": (0.40, False),
             "sacrum-square": (0.35, True), "sacrum-square-25": (0.25, True), "sacrum-square-45": (0.45, True)}


def crop_field_of_view(vol: io.Volume, truth: io.DiscPoints, top: float, square: bool = False
                       ) -> tuple[io.Volume, io.DiscPoints]:
    """``vol`` without the top ``top`` fraction of its head-feet extent (and, ``square``, cut front and back
    to a square around the reference discs' mean front-back position), as a volume of its own with the
    affine that keeps every voxel where it was; ``truth`` keeps the discs inside the crop."""
    lr, si, ap, flip_si, flip_ap = pp.sagittal_axes(vol.affine)
    shape = np.array(vol.data.shape[:3])
    lo, hi = np.zeros(3, int), shape.copy()
    cut = int(round(top * shape[si]))
    if flip_si:  # index grows towards the head: the top is the end
        hi[si] -= cut
    else:
        lo[si] += cut
    if square:
        side_mm = (hi[si] - lo[si]) * vol.spacing[si]
        side = min(int(round(side_mm / vol.spacing[ap])), int(shape[ap]))
        centre = float(np.mean(truth.voxels()[:, ap])) if len(truth) else shape[ap] / 2
        start = int(np.clip(round(centre - side / 2), 0, shape[ap] - side))
        lo[ap], hi[ap] = start, start + side
    data = vol.data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    affine = np.asarray(vol.affine, float).copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    out = io.Volume(np.ascontiguousarray(data), affine, f"{vol.name}", vol.kind, path=vol.path,
                    metadata=dict(vol.metadata))
    inv = np.linalg.inv(affine)
    keep = []
    for d in truth.discs:
        v = (inv @ np.r_[np.asarray(d.world, float), 1.0])[:3]
        if np.all(v >= -0.5) and np.all(v <= np.array(data.shape[:3]) - 0.5):
            keep.append(d)
    return out, io.DiscPoints(keep, affine, data.shape[:3], truth.source)


def _evaluate_fov(predictor: Predictor, layout, stems, subset, where, callback) -> dict:
    cases = []
    for i, stem in enumerate(stems):
        img_path, tgt_path = layout.pairs[stem]
        vol = io.read_nifti(img_path, kind="image")
        truth = D.disc_points(tgt_path, vol)
        for name, (top, square) in FOV_CROPS.items():
            t0 = time.perf_counter()
            cvol, ctruth = crop_field_of_view(vol, truth, top, square)
            case = eval_disc_volume(predictor, cvol, ctruth)
            case.update(stem=stem, crop=name, seconds=time.perf_counter() - t0)
            cases.append(case)
        if callback:
            from .events import Progress

            callback(Progress(done=i + 1, total=len(stems), item=stem, status="evaluated"))
    mean = _mean(cases, "discs")
    mean["per_crop"] = {name: _disc_summary([c for c in cases if c["crop"] == name]) for name in FOV_CROPS}
    return {"subset": subset, "split": where, "cases": [_jsonable(c) for c in cases], "mean": _jsonable(mean),
            "model": predictor.config.get("model"), "data": str(layout.root), "fov_crops": list(FOV_CROPS)}


def source_of(stem: str) -> str:
    """The source a case comes from, by its name: the stem without its last ``_part``
    (``spine_vb1_07`` -> ``spine_vb1``)."""
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def _disc_summary(cases: list[dict]) -> dict:
    all_d = [d for c in cases for d in c["l2_all_mm"]]
    n_true = sum(c["n_true"] for c in cases)
    shifted = [c for c in cases if c.get("shift")]
    flagged = [c for c in cases if c.get("verdict", "ok") != "ok"]
    doubted = [c for c in cases if c.get("levels", "ok") != "ok"]
    d3 = [d for c in cases for d in c.get("l2_3d_all_mm", [])]
    return {"l2_mm": float(np.median(all_d)) if all_d else float("nan"),
            "l2_3d_mm": float(np.median(d3)) if d3 else float("nan"),
            "fnr": sum(c["fn"] for c in cases) / max(1, n_true),
            "fpr": sum(c["fp"] for c in cases) / max(1, n_true), "n_true": n_true,
            "misses": sum(c["fn"] for c in cases), "false_positives": sum(c["fp"] for c in cases),
            "unscored": sum(c.get("unscored", 0) for c in cases), "cases": len(cases),
            # scans whose predictions sit on labelled discs a level (or more) off their names
            "off_by_levels": len(shifted), "off_by_levels_rate": len(shifted) / max(1, len(cases)),
            "flagged": len(flagged),
            # do the flags mean something: wrong (numbered a level off) among the flagged scans, flagged among
            # the wrong ones, and wrong scans that carry no flag at all
            "flag_precision": (sum(bool(c.get("shift")) for c in flagged) / len(flagged)) if flagged else float("nan"),
            "flag_recall": (sum(c.get("verdict", "ok") != "ok" for c in shifted) / len(shifted)) if shifted
            else float("nan"),
            "silent_shifts": sum(c.get("verdict", "ok") == "ok" for c in shifted),
            # the same for the doubt about the levels alone ("check the levels", not one disc's position):
            # a shifted scan whose only flag is a low confidence on one disc is silent about its levels
            "levels_flagged": len(doubted),
            "levels_flag_precision": (sum(bool(c.get("shift")) for c in doubted) / len(doubted)) if doubted
            else float("nan"),
            "levels_flag_recall": (sum(c.get("levels", "ok") != "ok" for c in shifted) / len(shifted)) if shifted
            else float("nan"),
            "silent_level_shifts": sum(c.get("levels", "ok") == "ok" for c in shifted),
            "flagged_discs": sum(bool(d.get("flag")) for c in cases for d in c.get("predicted", []))}


def _mean(cases: list[dict], kind: str) -> dict:
    if kind == "discs":
        from ..io import disc_name

        out = {**_disc_summary(cases), "seconds_per_case": float(np.mean([c["seconds"] for c in cases]))}
        levels: dict[int, list] = {}
        for c in cases:
            for n, r in c["per_level"].items():
                levels.setdefault(int(n), []).append(r)
        out["per_level"] = {disc_name(n): {"l2_mm": _median(r["l2_mm"] for r in rs),
                                           "l2_3d_mm": _median(r.get("l2_3d_mm") for r in rs),
                                           "misses": sum(r["miss"] for r in rs), "n": len(rs)}
                            for n, rs in sorted(levels.items())}
        sources: dict[str, list] = {}
        for c in cases:
            sources.setdefault(source_of(c["stem"]), []).append(c)
        out["per_source"] = {k: _disc_summary(v) for k, v in sorted(sources.items())}
        return out
    out = {}
    for k in ("dice", "iou", "hd95"):
        vals = [c[f"{k}_mean"] for c in cases if np.isfinite(c[f"{k}_mean"])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
        classes = sorted({cl for c in cases for cl in c[k]})
        # partial labels: a class is averaged over the cases that drew it
        per = {cl: [c[k][cl] for c in cases if cl in c[k] and np.isfinite(c[k][cl])] for cl in classes}
        # a class no case could score (e.g. HD95 of a class never predicted) is NaN, said without a warning
        out[f"{k}_per_class"] = {str(cl): float(np.mean(v)) if v else float("nan") for cl, v in per.items()}
    out["cases"] = len(cases)
    out["seconds_per_case"] = float(np.mean([c["seconds"] for c in cases]))
    return out


def _median(values) -> float:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else float("nan")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
