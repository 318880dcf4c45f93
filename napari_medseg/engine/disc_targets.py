"""Disc training targets beyond one heatmap per labelled disc (our design, issue "disc levels that hold on
every protocol"; docs/engine.md "Disc targets"):

* **Known pixels of unlabelled levels** (:func:`known_masks`). A level a case does not label is unknown
  there, but not everywhere: the disc of the level just below the lowest labelled disc lies between the
  lowest labelled vertebral body and the next one, so the channel of that level is known to be empty
  everywhere else, in particular on the sacral segments further down. Without this, no case that leaves
  L5/S1 unlabelled ever teaches the L5/S1 channel that the S1/S2 junction is not L5/S1. The disc one level
  beyond the labelled chain is placed by reflecting the labelled disc through the vertebral body centre
  beyond it (the ``vertebrae/`` masks; by the chain's spacing where a case has none) and a disc of
  ``BAND`` spacings around it is left out of the loss; a level two or more beyond is left out beyond that
  disc; every other pixel of the channel counts as empty.
* **Depth channels** (:func:`depth_amplitudes`). A second heatmap per level whose height falls with the
  left-right distance between the slices a view averages and the disc's own position (a Gaussian of
  ``DEPTH_SIGMA_MM``), trained on thin views swept across the slices (``SWEEP``). At inference the depth
  channels over the same sweep give each disc's left-right position (engine/infer.py ``disc_depth``).
* **Extrapolated discs** (:func:`fit_next_disc`, :func:`extrapolate_next`, opt-in: ``--disc-extrapolate``).
  Most cases leave L5/S1 unlabelled although it is in the image, so the channel of the disc that anchors
  the numbering learns from few cases. Where a case labels the disc above (L4/L5) and has the vertebral
  body below it (L5), the unlabelled disc is placed at that body's centre plus the vector from the disc
  above to the body, turned and scaled as the training cases that label both discs show (lordosis: the
  chain turns ~25-50 degrees there); the fit's leave-one-out error is recorded with the model. The placed
  disc is a target of the heatmap channel, but never a "labelled" disc: no metric, prior or level
  balance counts it.
* **Field-of-view crops** (:func:`fov_crop`): the top of the view cut off (the content moves up, the
  bottom is the scan's end, as a scan that starts lower and shows more sacrum), or the bottom cut (a scan
  that ends early), or (opt-in share) a magnified square around the spine with the top cut
  (:func:`square_crop`), applied to image, targets and known masks alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.errors import InvalidInput
from .. import io
from . import preprocess as pp

BAND = 0.6  # radius, in disc spacings, left out of the loss around an unlabelled level's expected place
DEPTH_SIGMA_MM = 2.0  # fall-off of the depth channels with left-right distance to the disc
SWEEP_SLICES = 3  # slices a depth view averages
SWEEP_MM = 12.0  # the sweep covers the middle slice +- this far (and at most the scan)
DEPTH_KEY = 1000  # channel keys: level n's heatmap is n, its depth channel n + DEPTH_KEY (checkpoint.init_from)


def channel_keys(pre: dict) -> list[int]:
    """One key per output channel of a disc model: its SCT numbers, then ``n + DEPTH_KEY`` for each depth
    channel when the model has them (``preprocessing.depth``)."""
    numbers = [int(n) for n in pre.get("disc_numbers") or []]
    return numbers + ([n + DEPTH_KEY for n in numbers] if pre.get("depth") else [])


def sweep_offsets(n_slices: int, lr_spacing: float) -> list[int]:
    """Offsets from the middle slice of the thin views the depth channels are read on: every slice within
    ``SWEEP_MM`` of the middle that the volume has."""
    reach = int(np.floor(SWEEP_MM / max(float(lr_spacing), 1e-6)))
    mid = n_slices // 2
    return [o for o in range(-reach, reach + 1) if 0 <= mid + o < n_slices]


def body_centres(path: Path, vol: io.Volume, geo: dict) -> np.ndarray:
    """Centres of the vertebral bodies of a ``vertebrae/`` mask (one label value per body) as sagittal-view
    (row, col), head to feet: (n, 2)."""
    mask = np.asarray(io.read_nifti(path, kind="labels").data)
    if mask.shape[:3] != tuple(vol.data.shape[:3]):
        raise InvalidInput(f"{path.name}: vertebrae mask of shape {mask.shape} does not match its image {vol.data.shape}")
    values = [v for v in np.unique(mask) if v != 0]
    if not values:
        return np.zeros((0, 2))
    from scipy import ndimage

    centres = np.array(ndimage.center_of_mass(np.ones(mask.shape, np.float32), mask, values), dtype=float)
    rc = pp.voxel_to_view(centres, geo)
    return rc[np.argsort(rc[:, 0])]


def _beyond(chain: np.ndarray, bodies: np.ndarray, spacing: float, down: bool) -> np.ndarray:
    """Expected (row, col) of the disc one level beyond the end of ``chain`` (labelled discs, head to feet):
    the end disc reflected through the body centre beyond it, else one spacing on along the chain."""
    end = chain[-1] if down else chain[0]
    if len(bodies):
        side = bodies[:, 0] > end[0] if down else bodies[:, 0] < end[0]
        near = bodies[side]
        if len(near):
            b = near[np.argmin(np.abs(near[:, 0] - end[0]))]
            if abs(b[0] - end[0]) <= 0.8 * spacing:
                return 2 * b - end
    if len(chain) >= 2:
        step = (chain[-1] - chain[-2]) if down else (chain[0] - chain[1])
        return end + step
    return end + np.array([spacing if down else -spacing, 0.0])


def known_masks(numbers: list[int], labelled: dict[int, tuple[float, float]], bodies: np.ndarray,
                size: tuple[int, int]) -> np.ndarray:
    """(K, H, W) uint8: 1 where channel ``k`` (level ``numbers[k]``) is known, in network-input pixels.
    Labelled levels are known everywhere; see the module docstring for the others. ``labelled``: level ->
    (row, col) of the case's labelled discs; ``bodies``: body centres (n, 2), head to feet (may be empty)."""
    h, w = size
    out = np.ones((len(numbers), h, w), np.uint8)
    if not labelled:
        out[:] = 0  # nothing labelled: nothing known
        return out
    levels = sorted(labelled)
    chain = np.array([labelled[n] for n in levels], dtype=float)
    gaps = np.linalg.norm(np.diff(chain, axis=0), axis=1)
    spacing = float(np.median(gaps)) if len(gaps) else 0.12 * h
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    below, above = _beyond(chain, bodies, spacing, True), _beyond(chain, bodies, spacing, False)
    for k, n in enumerate(numbers):
        if n in labelled:
            continue
        beyond = n - levels[-1] if n > levels[-1] else levels[0] - n if n < levels[0] else 0
        if beyond == 0:  # a gap inside the labelled chain: its place is between its labelled neighbours
            lo = max(m for m in levels if m < n)
            hi = min(m for m in levels if m > n)
            p = np.array(labelled[lo]) + (np.array(labelled[hi]) - np.array(labelled[lo])) * (n - lo) / (hi - lo)
            unknown = (yy - p[0]) ** 2 + (xx - p[1]) ** 2 <= (BAND * spacing) ** 2
        else:
            p = below if n > levels[-1] else above
            unknown = (yy - p[0]) ** 2 + (xx - p[1]) ** 2 <= (BAND * spacing) ** 2
            if beyond >= 2:  # further levels: everything past the next disc's place is unknown
                unknown |= (yy > p[0] + BAND * spacing) if n > levels[-1] else (yy < p[0] - BAND * spacing)
        out[k][unknown] = 0
    return out


EXTRAPOLATE_MIN_CASES = 3  # cases labelling both discs that a fit needs


def _frame(labelled: dict[int, tuple[float, float]], bodies: np.ndarray, n: int, px_mm: np.ndarray):
    """(body centre below disc ``n - 1``, vector from that disc to it), in mm of the view, or None (also
    where the next body is further than 0.8 disc spacings: the mask does not hold the body under the disc)."""
    if n - 1 not in labelled or not len(bodies):
        return None
    above = np.asarray(labelled[n - 1], float)
    below = bodies[bodies[:, 0] > above[0]]
    if not len(below):
        return None
    body = below[np.argmin(below[:, 0])]
    chain = np.array([labelled[m] for m in sorted(labelled)], float)
    if len(chain) >= 2 and np.linalg.norm(body - above) > 0.8 * np.median(np.linalg.norm(np.diff(chain, axis=0), axis=1)):
        return None
    return body * px_mm, (body - above) * px_mm


def _angle(v: np.ndarray) -> float:
    return float(np.arctan2(v[1], v[0]))


def _turn(v: np.ndarray, angle: float, ratio: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]]) * ratio


def fit_next_disc(cases, n: int) -> dict | None:
    """How disc ``n`` lies beyond the body under disc ``n - 1`` in ``cases`` that label both: a list of
    (labelled {level: (row, col)}, body centres (k, 2) head to feet, (row, col) mm per pixel). Returns
    ``{"level", "turn_deg", "ratio", "cases", "loo_mm": [median, max]}`` or None with fewer than
    ``EXTRAPOLATE_MIN_CASES`` such cases."""
    rows = []
    for labelled, bodies, px_mm in cases:
        f = _frame(labelled, bodies, n, np.asarray(px_mm, float))
        if f is None or n not in labelled:
            continue
        body, v = f
        w = np.asarray(labelled[n], float) * px_mm - body
        if np.linalg.norm(v) < 1e-6:
            continue
        d = (_angle(w) - _angle(v) + np.pi) % (2 * np.pi) - np.pi
        rows.append((d, np.linalg.norm(w) / np.linalg.norm(v), body, v, np.asarray(labelled[n], float) * px_mm))
    if len(rows) < EXTRAPOLATE_MIN_CASES:
        return None
    loo = []
    for i, (_, _, body, v, truth) in enumerate(rows):
        rest = [r for j, r in enumerate(rows) if j != i]
        p = body + _turn(v, float(np.mean([r[0] for r in rest])), float(np.mean([r[1] for r in rest])))
        loo.append(float(np.linalg.norm(p - truth)))
    return {"level": int(n), "turn_deg": float(np.degrees(np.mean([r[0] for r in rows]))),
            "ratio": float(np.mean([r[1] for r in rows])), "cases": len(rows),
            "loo_mm": [float(np.median(loo)), float(np.max(loo))]}


def extrapolate_next(fit: dict, labelled: dict[int, tuple[float, float]], bodies: np.ndarray, px_mm) -> np.ndarray | None:
    """(row, col) in pixels of disc ``fit["level"]`` for a case that labels the disc above but not it, from
    :func:`fit_next_disc`; None where the case lacks the disc above or the body below it."""
    px_mm = np.asarray(px_mm, float)
    f = _frame(labelled, bodies, int(fit["level"]), px_mm)
    if f is None:
        return None
    body, v = f
    return (body + _turn(v, np.radians(fit["turn_deg"]), fit["ratio"])) / px_mm


def depth_amplitudes(disc_lr_mm: np.ndarray, visible: np.ndarray, centres_mm: np.ndarray) -> np.ndarray:
    """(V, K) heights of the depth channels: for view ``v`` (averaging slices centred at ``centres_mm[v]``)
    and labelled disc ``k`` at ``disc_lr_mm[k]``, a Gaussian of ``DEPTH_SIGMA_MM`` in their distance; 0 for
    unlabelled levels."""
    d = np.asarray(centres_mm, float)[:, None] - np.asarray(disc_lr_mm, float)[None, :]
    amp = np.exp(-(d ** 2) / (2 * DEPTH_SIGMA_MM ** 2)).astype(np.float32)
    return amp * np.asarray(visible, bool)[None, :]


DEPTH_MIN = 0.1  # a depth profile peaking below this gives no left-right estimate (the disc keeps the middle)


def depth_peaks(heat: np.ndarray, centres: np.ndarray, rows, cols, channels, radius: int = 2) -> np.ndarray:
    """Left-right positions (in the units of ``centres``) of discs from depth heatmaps over a sweep of views.
    ``heat``: (V, K, h, w) for views centred at ``centres`` (V,), increasing; disc ``i`` is read in channel
    ``channels[i]`` as the maximum within ``radius`` pixels of (``rows[i]``, ``cols[i]``). The view where that
    profile peaks, refined by the parabola through it and its two neighbours (at the ends of the sweep, the
    end); NaN where the profile's peak is below ``DEPTH_MIN``."""
    v, _, h, w = heat.shape
    out = np.full(len(rows), np.nan)
    for i, (r, c, k) in enumerate(zip(rows, cols, channels)):
        r0, c0 = int(round(float(r))), int(round(float(c)))
        win = heat[:, k, max(r0 - radius, 0): min(r0 + radius + 1, h), max(c0 - radius, 0): min(c0 + radius + 1, w)]
        if win.size == 0:
            continue
        prof = win.reshape(v, -1).max(axis=1)
        j = int(np.argmax(prof))
        if prof[j] < DEPTH_MIN:
            continue
        out[i] = centres[j]
        if 0 < j < v - 1:
            x0, x1, x2 = centres[j - 1: j + 2]
            y0, y1, y2 = prof[j - 1: j + 2]
            den = (x0 - x1) * (x0 - x2) * (x1 - x2)
            a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
            b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den
            if a < 0:
                out[i] = float(np.clip(-b / (2 * a), x0, x2))
    return out


# ---------------------------------------------------------------- field-of-view augmentation

FOV_PROB = 0.5  # probability that a training sample is cropped
TOP_CUT = (0.1, 0.45)  # fraction of the view's height cut from the top (content moves up)
BOTTOM_CUT = (0.1, 0.3)  # fraction cut from the bottom (the scan ends early)
BOTTOM_SHARE = 0.25  # of the cropped samples, this share is cut at the bottom


SQUARE_CUT = (0.2, 0.5)  # magnified squares: fraction of the height cut from the top (1.25x - 2x)


def square_crop(rng: np.random.Generator, image: np.ndarray, target: np.ndarray, known: np.ndarray):
    """A magnified view with more sacrum, as ``evaluate.FOV_CROPS``' squares build it: the top ``SQUARE_CUT``
    of the view cut, the front and back cut to a square of the remaining height around the spine (the mean
    column of the labelled discs' peaks, else the middle), and that square resized to the whole view; the
    targets and known pixels go through the same resize (bilinear / nearest), so the Gaussians grow with the
    magnification as under the scale augmentation. Returns the three arrays."""
    h, w = image.shape[-2:]
    a = int(round(rng.uniform(*SQUARE_CUT) * h))
    side = h - a
    flat = target.reshape(len(target), -1)
    on = flat.max(1) > 0.5
    col = float(np.mean(flat[on].argmax(1) % w)) if on.any() else (w - 1) / 2
    c0 = int(np.clip(round(col - side / 2), 0, w - side))
    zoom = lambda x, mode: pp.resize(np.ascontiguousarray(x[:, a:, c0: c0 + side], np.float32), (h, w), mode).numpy()  # noqa: E731
    return zoom(image, "bilinear"), zoom(target, "bilinear"), (zoom(known, "nearest") > 0.5).astype(known.dtype)


def fov_crop(rng: np.random.Generator, image: np.ndarray, target: np.ndarray, known: np.ndarray,
             square_share: float = 0.0):
    """Crop a square training view's field of view as a scan of another protocol would (see the module
    docstring), with probability ``FOV_PROB``. ``image`` (1, H, W), ``target`` and ``known`` (C, H, W).
    What leaves the view is gone from every array: a disc whose centre is cut away has no target (not even
    the edge of its Gaussian) and its channel is known to be empty; the exposed rows are the view's darkest value in the image, empty and known in the
    targets. ``square_share``: of the cropped samples, this share is a magnified square instead
    (:func:`square_crop`; ``--disc-square-crops``). Returns the three arrays (new ones when cropped)."""
    if rng.random() >= FOV_PROB:
        return image, target, known
    if square_share and rng.random() < square_share:
        return square_crop(rng, image, target, known)
    h = image.shape[-2]
    img, tgt, kn = image.copy(), np.zeros_like(target), np.ones_like(known)
    fill = float(image.min())
    peak = target.reshape(len(target), -1).argmax(1) // target.shape[-1]  # each channel's disc row
    if rng.random() >= BOTTOM_SHARE:
        a = int(round(rng.uniform(*TOP_CUT) * h))
        img[:, : h - a], img[:, h - a:] = image[:, a:], fill
        tgt[:, : h - a], kn[:, : h - a] = target[:, a:], known[:, a:]
        gone = peak < a
    else:
        a = int(round(rng.uniform(*BOTTOM_CUT) * h))
        img[:, h - a:] = fill
        tgt[:, : h - a], kn[:, : h - a] = target[:, : h - a], known[:, : h - a]
        gone = peak >= h - a
    tgt[gone & (target.reshape(len(target), -1).max(1) > 0)] = 0.0  # a disc cut away leaves no halo
    return img, tgt, kn
