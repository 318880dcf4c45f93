"""Disc heatmaps -> candidate peaks -> the most plausible superior-to-inferior sequence -> named discs.

Per channel (one per disc), candidates are the connected components above half the channel's maximum
(their heat-weighted centroids), as in the reference decoding. A dynamic programme then picks at most
one candidate per disc so that discs run strictly from superior to inferior in channel order, scoring
each pick by its heat and its agreement with the mean disc positions of the training data (the prior).
The number of discs is never taken from the ground truth: a disc is left out when its channel has no
candidate above ``min_confidence`` or when leaving it out gives the better sequence.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


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
