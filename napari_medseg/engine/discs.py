"""Disc heatmaps -> candidate peaks -> the most plausible superior-to-inferior sequence -> named discs.

Per channel (one per disc), candidates are the connected components above half the channel's maximum
(their heat-weighted centroids), as in the reference decoding. A dynamic programme then picks at most
one candidate per disc so that discs run strictly from superior to inferior in channel order, scoring
each pick by its heat and its agreement with the mean disc positions of the training data (the prior).
The number of discs is never taken from the ground truth: a disc is left out when its channel has no
candidate above ``min_confidence`` or when leaving it out gives the better sequence.

Numbering that holds (our choice; the paper numbers by channel alone): the lumbosacral junction is the
landmark a radiologist counts from. When the model's L5/S1 channel finds its disc (:func:`anchor_numbering`),
the decoded chain is renumbered upward from it by order and spacing, and a renaming is said in the flags;
when it does not, the names rest on the other channels and the position prior only, and every disc is
flagged so that a person checks the levels (or names one disc: :func:`apply_prior`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage
from ..io.errors import InvalidInput


def candidates(channel: np.ndarray, min_confidence: float) -> list[dict]:
    peak = float(channel.max())
    if peak < min_confidence:
        return []
    mask = channel >= peak / 2
    comp, n = ndimage.label(mask)
    out = []
    for i in range(1, n + 1):
        sel = comp == i
        weights = channel * sel
        total = weights.sum()
        if total <= 0:
            continue
        rr, cc = np.nonzero(sel)
        w = channel[rr, cc]
        conf = float(channel[sel].max())
        if conf < min_confidence:
            continue
        out.append({"row": float((rr * w).sum() / w.sum()), "col": float((cc * w).sum() / w.sum()),
                    "confidence": min(1.0, conf)})
    return out


def decode_discs(heatmaps: np.ndarray, numbers: list[int], prior: dict, *, min_confidence: float = 0.2,
                 min_gap: float = 3.0, prior_weight: float = 0.5) -> list[dict]:
    """Pick the best ordered sequence. ``heatmaps``: (K, H, W); ``numbers``: SCT number of each channel."""
    cands = [candidates(heatmaps[k], min_confidence) for k in range(len(numbers))]
    h = heatmaps.shape[1]

    def score(k, c):
        p = prior.get(str(numbers[k])) or {}
        s = c["confidence"]
        if p.get("row") is not None:
            spread = max(p.get("row_std") or 0.0, 0.05 * h)
            z = (c["row"] - p["row"]) / spread
            s -= prior_weight * min(z * z, 9.0) / 9.0
        return s

    # best[k][j]: best total for discs 0..k ending with candidate j of disc k chosen (j=-1: none yet)
    states = {None: (0.0, [])}  # last chosen row -> (total, picks)
    for k, cs in enumerate(cands):
        new = dict(states)  # skipping disc k keeps every state
        for c in cs:
            sc = score(k, c)
            if sc <= 0:
                continue
            for last_row, (total, picks) in states.items():
                if last_row is not None and c["row"] < last_row + min_gap:
                    continue
                cand_total = total + sc
                key = c["row"]
                if key not in new or new[key][0] < cand_total:
                    new[key] = (cand_total, picks + [{**c, "number": numbers[k]}])
        states = new
    best = max(states.values(), key=lambda v: v[0])
    return best[1]


# ---------------------------------------------------------------- numbering from a landmark


# decoding settings (our choices); a checkpoint may record others chosen on its validation split
# (``preprocessing.decoding``, ``benchmarks/disc_decoding.py``), which the Predictor uses instead.
# ``below_floor``, ``agree_min`` and ``edge_room`` are fixed policies, not chosen on validation (a flag costs
# a person's time, a level shift without one costs a wrong report): below_floor below 0.2, the lowest heat
# the decoder takes as a disc; agree_min: the L4/L5 and L5/S1 heatmaps must pick discs at least half a disc
# spacing apart (not the same disc); edge_room: L5/S1 needs at least half a spacing of scan below it (the top
# of S1) to be told from a disc at the edge of the field of view; sure_anchor: an anchor below half the
# trained peak height (ANCHOR_CONFIDENCE, as LOW_CONFIDENCE) counts but leaves the count in doubt. ``renamed_doubt`` (whether a renaming by
# the anchor is itself a doubt about the levels) is chosen per checkpoint by benchmarks/disc_decoding.py.
DECODING = {"min_confidence": 0.2, "prior_weight": 0.5, "anchor_confidence": 0.5, "second_ratio": None,
            "low_confidence": 0.5, "anchor_levels": [25], "below_floor": 0.15, "agree_min": 0.5,
            "edge_room": 0.5, "sure_anchor": 0.5, "renamed_doubt": True}

ANCHOR = 25  # L5/S1, the lumbosacral junction
ANCHOR_CONFIDENCE = 0.5  # our choice: half the trained peak height, as LOW_CONFIDENCE below
STEP_GAP = 1.6  # a gap of this many typical spacings (GAP_RANGE's upper end) or more counts as a missed level


def level_steps(positions) -> list[int]:
    """Levels between neighbours of a head-to-feet chain of disc positions ((n, d) array, any unit): one per
    gap, two where a gap is at least ``STEP_GAP`` typical (median) spacings (a disc was missed), and so on.
    The one rule by which both a landmark and a disc named by a person renumber a chain."""
    pos = np.asarray(positions, dtype=float).reshape(len(positions), -1)
    gaps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    if not len(gaps):
        return []
    typical = max(float(np.median(gaps)), 1e-9)
    return [1 + max(0, int(np.floor(g / typical - STEP_GAP + 1.0))) for g in gaps]


def renumber_chain(positions, anchor: int, number: int) -> list[int]:
    """Numbers for a head-to-feet chain when its disc ``anchor`` is ``number``: outward by
    :func:`level_steps`."""
    steps = level_steps(positions)
    out = [0] * len(positions)
    out[anchor] = int(number)
    for k in range(anchor + 1, len(out)):
        out[k] = out[k - 1] + steps[k - 1]
    for k in range(anchor - 1, -1, -1):
        out[k] = out[k + 1] - steps[k]
    return out


NOT_ANCHORED = ("numbering not anchored: neither L4/L5 nor L5/S1 found (does the scan reach the sacrum?), so "
                "the levels rest on the heatmaps and the position prior: check them or name one disc")


class Numbering(NamedTuple):
    """What :func:`anchor_numbering` decided: the renumbered discs; ``doubt``, why the levels themselves need a
    person's check ("" = nothing against the count: every disc is flagged with it otherwise); ``count``, how
    the levels were counted, said but not a flag ("counted from L5/S1; the heatmaps alone had named 3 disc(s)
    1 level(s) higher")."""

    discs: list[dict]
    doubt: str
    count: str = ""


def anchor_numbering(found: list[dict], heatmaps: np.ndarray, numbers: list[int],
                     min_confidence: float = ANCHOR_CONFIDENCE, second_ratio: float | None = None,
                     levels=(ANCHOR,), rows_in_scan: int | None = None, below_floor: float | None = None,
                     agree_min: float | None = None, edge_room: float | None = None,
                     sure_anchor: float | None = None, respond_floor: float = 0.2,
                     renamed_doubt: bool = True) -> Numbering:
    """Renumber decoded discs (``decode_discs``'s picks, head to feet) from the lumbosacral junction.

    ``levels``: the SCT numbers that may anchor the count, L5/S1 (25) and, where the decoding chose it,
    L4/L5 (24): the disc just above the L5 body, labelled in every training case, whose channel has learnt
    on every case that the discs and sacral segments below it are not L4/L5. The strongest candidate of
    those channels at or above ``min_confidence`` is the anchor. The decoded disc within half a typical
    spacing of it takes the anchor's level (otherwise the anchor joins the chain as a new disc), discs that
    would be numbered below L5/S1 are dropped (sacral segments, not lumbar discs), and the rest are
    renumbered outward by :func:`renumber_chain`. Returns a :class:`Numbering`: ``doubt`` is ``NOT_ANCHORED``
    when no anchor is found, else the sentences of the rules below that fired; ``count`` says which disc
    anchored and how many discs it renamed (with ``renamed_doubt`` also a doubt). A model without any of
    ``levels`` is returned unchanged, without a note (it cannot be anchored; its card names its levels).

    The doubts, our rules (each None: off; docs/engine.md "Numbering anchored at the lumbosacral junction"):
    ``second_ratio``, two readings of the junction (:func:`_second_readings`); ``below_floor``, the count
    ends at L4/L5 though the scan (``rows_in_scan`` rows) goes on (:func:`_nothing_below_l4_l5`);
    ``agree_min``, the junction channels (from ``respond_floor`` up) on one disc
    (:func:`_junction_channels_disagree`); ``sure_anchor``, an anchor weaker than this (it anchors from
    ``min_confidence`` up); ``edge_room``, L5/S1 less than this many spacings above the scan's lower edge."""
    levels = [lv for lv in levels if lv in numbers]
    if not levels:
        return Numbering(found, "")
    cands = {lv: candidates(heatmaps[numbers.index(lv)], min_confidence) for lv in levels}
    pool = [(c["confidence"], lv, i) for lv, cs in cands.items() for i, c in enumerate(cs)]
    if not pool:
        return Numbering(found, NOT_ANCHORED, "not anchored")
    _, level, i = max(pool)
    a = cands[level][i]
    out, moved, typical = _count_from(found, a, level, numbers)
    notes = []
    count = f"counted from {_name(level)}"
    if moved:
        shift = int(np.median(moved))
        renamed = (f"{len(moved)} disc(s) the heatmaps had named {abs(shift)} level(s) "
                   f"{'lower' if shift > 0 else 'higher'}")
        count += f"; it renamed {renamed}"
        if renamed_doubt:
            notes.append(f"numbering anchored at {_name(level)} renamed {renamed}: check the levels")
    if np.isfinite(typical):
        if second_ratio is not None:
            notes += _second_readings(heatmaps, numbers, cands[level], a, level, levels, typical, second_ratio)
        if below_floor is not None and rows_in_scan is not None:
            notes += _nothing_below_l4_l5(heatmaps, numbers, out, typical, rows_in_scan, below_floor)
        if agree_min is not None:
            notes += _junction_channels_disagree(heatmaps, numbers, typical, agree_min, respond_floor)
    if sure_anchor is not None and a["confidence"] < sure_anchor:
        notes.append(f"the count rests on a weak {_name(level)} ({a['confidence']:.3f}, below "
                     f"{sure_anchor:.2f}): check the levels")
    if edge_room is not None and rows_in_scan is not None and out and out[-1]["number"] == ANCHOR \
            and rows_in_scan - out[-1]["row"] < edge_room * typical:
        notes.append("the disc named L5/S1 lies at the lower edge of the scan, with no S1 body in view below it: "
                     "check that it is L5/S1")
    return Numbering(out, "; ".join(notes), count)


def _count_from(found: list[dict], a: dict, level: int, numbers: list[int]) -> tuple[list[dict], list[int], float]:
    """The decoded chain renumbered from anchor candidate ``a`` at ``level`` (see :func:`anchor_numbering`):
    (discs kept, the level changes of renamed discs, the typical spacing in rows)."""
    chain = sorted(found, key=lambda f: f["row"])
    rows = np.array([f["row"] for f in chain], dtype=float)
    gaps = np.diff(rows)
    typical = float(np.median(gaps)) if len(gaps) else float("inf")
    near = int(np.argmin(np.abs(rows - a["row"]))) if len(rows) else -1
    if near >= 0 and abs(rows[near] - a["row"]) <= typical / 2:
        if chain[near]["number"] != level:  # the anchor's own position replaces the other channel's
            chain[near] = {**chain[near], "row": a["row"], "col": a["col"], "confidence": a["confidence"]}
        idx = near
    else:
        chain.append({**a, "number": level})
        chain.sort(key=lambda f: f["row"])
        idx = next(k for k, f in enumerate(chain) if f["row"] == a["row"] and f["col"] == a["col"])
    new = renumber_chain([[f["row"], f["col"]] for f in chain], idx, level)
    # above the model's top level: unnamed; below L5/S1: sacral segments, not lumbar discs
    keep = [k for k, n in enumerate(new) if min(numbers) <= n <= ANCHOR]
    moved = [chain[k]["number"] - new[k] for k in keep if chain[k]["number"] != new[k]]
    return [{**chain[k], "number": new[k]} for k in keep], moved, typical


def _second_readings(heatmaps, numbers, own: list[dict], a: dict, level: int, levels, typical: float,
                     ratio: float) -> list[str]:
    """``second_ratio``'s doubts: a rival candidate in the anchor's channel, or the other anchoring channel
    pointing at a disc the count names otherwise."""
    notes = []
    rivals = [c for c in own if c is not a and abs(c["row"] - a["row"]) > typical / 2
              and c["confidence"] >= ratio * a["confidence"]]
    if rivals:
        r = max(rivals, key=lambda c: c["confidence"])
        notes.append(f"two places look like {_name(level)} ({r['confidence']:.2f} against "
                     f"{a['confidence']:.2f}, {'below' if r['row'] > a['row'] else 'above'} the one taken): "
                     "check that L5/S1 is not S1/S2 or a transitional vertebra")
    for other in levels:  # the other anchoring channel, down to ``ratio`` of the anchor's height
        oc = candidates(heatmaps[numbers.index(other)], ratio * a["confidence"]) if other != level else []
        if not oc:
            continue
        o = max(oc, key=lambda c: c["confidence"])
        at = level + int(round((o["row"] - a["row"]) / typical))
        if at != other:
            notes.append(f"the {_name(other)} heatmap points at the disc the count from {_name(level)} names "
                         f"{_name(at) if min(numbers) <= at <= ANCHOR else 'outside the lumbar spine'}: check "
                         "that L5/S1 is not S1/S2 or a transitional vertebra")
    return notes


def _nothing_below_l4_l5(heatmaps, numbers, out: list[dict], typical: float, rows_in_scan: int,
                         floor: float) -> list[str]:
    """``below_floor``'s doubt: the count ends at L4/L5 though the scan goes on, and nothing below it looks
    like L5/S1."""
    if not out or out[-1]["number"] != ANCHOR - 1 or ANCHOR not in numbers or rows_in_scan - out[-1]["row"] <= typical:
        return []
    below = [c for c in candidates(heatmaps[numbers.index(ANCHOR)], floor)
             if 0.4 * typical <= c["row"] - out[-1]["row"] <= 1.6 * typical]
    return [] if below else ["nothing below L4/L5 looks like L5/S1 although the scan goes on: check that the disc "
                             "named L4/L5 is not L5/S1 (the sacrum counted as a lumbar level)"]


def _junction_channels_disagree(heatmaps, numbers, typical: float, agree_min: float, floor: float) -> list[str]:
    """``agree_min``'s doubt: the strongest L4/L5 and L5/S1 candidates (each at least ``floor``) are not one
    disc apart, L5/S1 below."""
    if not {ANCHOR - 1, ANCHOR} <= set(numbers):
        return []
    tops = [max(candidates(heatmaps[numbers.index(lv)], floor), key=lambda c: c["confidence"], default=None)
            for lv in (ANCHOR - 1, ANCHOR)]
    if not all(tops) or tops[1]["row"] - tops[0]["row"] >= agree_min * typical:
        return []
    return [f"the L4/L5 and L5/S1 heatmaps point at the same disc ({tops[0]['confidence']:.2f} and "
            f"{tops[1]['confidence']:.2f}, {abs(tops[1]['row'] - tops[0]['row']) / typical:.1f} spacings apart): "
            "check whether it is L4/L5 or L5/S1"]


def _name(number: int) -> str:
    from ..io.points import disc_name

    return disc_name(number)


# ---------------------------------------------------------------- flags: what a person should check


class DiscsFlagged(UserWarning):
    """Some labelled discs need a person's check (see each disc's ``flag``)."""


LOW_CONFIDENCE = 0.5  # our choice: below half the heatmap's trained peak height
OFF_CHAIN = 0.5  # a disc further than this fraction of the typical disc spacing from its neighbours' line
GAP_RANGE = (0.5, 1.6)  # a gap per level outside this range of the scan's median gap per level


def _off_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(float(np.dot(ab, ab)), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def flag_discs(points, numbering: str = "", low_confidence: float | None = None):
    """Set each disc's ``flag`` (and so the scan's ``verdict``): low confidence, a gap to a neighbouring
    disc unlike the scan's typical spacing per level, or a position off the line through its neighbours
    (e.g. a 'disc' in posterior soft tissue). Our rules, from the failure cases we saw on scans of another
    protocol; they flag for review, they do not remove anything. ``numbering``: a reason to doubt every
    name of the scan (:func:`anchor_numbering`'s doubt), given to every disc first and kept as the scan's
    ``levels`` (a doubt about the levels, as against one disc's position). ``low_confidence``:
    the confidence below which a disc is flagged (default ``LOW_CONFIDENCE``; a checkpoint may record
    another, chosen on its validation split). Returns ``points`` (flags set in place)."""
    low = LOW_CONFIDENCE if low_confidence is None else float(low_confidence)
    points.levels = numbering
    discs = sorted(points.discs, key=lambda d: d.number)
    for d in discs:
        d.flag = ""
    reasons: dict[int, list[str]] = {id(d): ([numbering] if numbering else []) for d in discs}
    for d in discs:
        if d.confidence < low:
            reasons[id(d)].append(f"low confidence {d.confidence:.2f}")
    if len(discs) >= 3:
        xyz = np.array([d.world for d in discs], dtype=float)
        levels = np.array([d.number for d in discs], dtype=float)

        def gaps_of(idx):  # mm per level between consecutive discs of ``idx``
            return np.linalg.norm(np.diff(xyz[idx], axis=0), axis=1) / np.maximum(np.diff(levels[idx]), 1)

        typical = float(np.median(gaps_of(list(range(len(discs))))))
        # off the chain: remove the worst interior outlier while it lies further than OFF_CHAIN x the typical
        # spacing from the segment joining its remaining neighbours (so its neighbours are not blamed for it)
        active = list(range(len(discs)))
        while len(active) >= 3:
            offs = {active[k]: _off_segment(xyz[active[k]], xyz[active[k - 1]], xyz[active[k + 1]])
                    for k in range(1, len(active) - 1)}
            worst = max(offs, key=offs.get)
            if offs[worst] <= OFF_CHAIN * typical:
                break
            reasons[id(discs[worst])].append(f"{offs[worst]:.0f} mm off the line of its neighbours "
                                             f"(disc spacing {typical:.0f} mm)")
            active.remove(worst)
        gaps = gaps_of(active)
        typical = float(np.median(gaps)) if len(gaps) else typical
        for k, i in enumerate(active):  # spacing, among the discs on the chain
            for gap, other in ((k - 1, k - 1), (k, k + 1)):
                if 0 <= gap < len(gaps) and not GAP_RANGE[0] * typical <= gaps[gap] <= GAP_RANGE[1] * typical:
                    reasons[id(discs[i])].append(f"{gaps[gap]:.0f} mm per level to {discs[active[other]].name} "
                                                 f"(typical {typical:.0f} mm)")
                    break
    elif discs:
        for d in discs:
            reasons[id(d)].append(f"only {len(discs)} disc(s) found: spacing cannot be checked")
    for d in discs:
        d.flag = "; ".join(reasons[id(d)])
    return points


# ---------------------------------------------------------------- the user's named disc fixes the numbering


def apply_prior(points, marked):
    """Renumber ``points`` (``io.DiscPoints``) so that they agree with discs a person named.

    ``marked``: ``io.DiscPoints`` (or a list of ``io.Disc``) in the same world space, e.g. one disc the
    user placed and named. The predicted disc nearest to the first marked disc takes that disc's name and
    the others are renumbered outward from it in their head-to-feet order, one level per typical disc
    spacing (:func:`renumber_chain`: a gap of ``STEP_GAP`` spacings or more skips a level, where a disc
    was missed). On a scan outside its training levels the model finds the discs but
    misnames them, sometimes skipping a level between neighbours; their order and spacing are what it gets
    right (our choice). Each marked disc then replaces the prediction nearest to it (the person's position
    and name win; confidence 1). Flags are recomputed (``flag_discs``). Returns a new ``DiscPoints``;
    ``points`` is unchanged."""
    from ..io.points import Disc, DiscPoints

    marked = list(getattr(marked, "discs", marked))
    discs = [Disc(d.number, tuple(d.world), d.confidence, d.voxel, d.flag) for d in points.discs]
    if not marked or not discs:
        return DiscPoints(discs, points.affine, points.shape, points.source, points.levels, points.count)
    xyz = np.array([d.world for d in discs], dtype=float)

    def nearest(m) -> int:
        return int(np.argmin(np.linalg.norm(xyz - np.asarray(m.world, dtype=float), axis=1)))

    order = sorted(range(len(discs)), key=lambda i: discs[i].number)  # head to feet, as decoded
    chain = renumber_chain(xyz[order], order.index(nearest(marked[0])), int(marked[0].number))
    for k, i in enumerate(order):
        discs[i].number = chain[k]
    inv = None if points.affine is None else np.linalg.inv(np.asarray(points.affine, dtype=float))
    for m in marked:
        k = nearest(m)
        vox = None if inv is None else tuple(float(v) for v in (inv @ np.r_[np.asarray(m.world, float), 1.0])[:3])
        discs[k] = Disc(int(m.number), tuple(float(c) for c in m.world), 1.0, vox)
        xyz[k] = m.world
    numbers = [d.number for d in discs]
    if len(set(numbers)) != len(numbers):
        raise InvalidInput("the named discs disagree with each other (two discs would get the same name); "
                         "name one disc, or discs in their head-to-feet order")
    from ..io.points import disc_name

    for n in numbers:
        disc_name(n)  # a shift past C1 or S1 is an error, not a silent wrong name
    out = DiscPoints(sorted(discs, key=lambda d: d.number), points.affine, points.shape, points.source,
                     count=f"counted from {marked[0].name}, named by a person")
    return flag_discs(out)  # no doubt about the levels left: a person named them
