"""Hard negatives by the paper's rule ``D(v, v−) < D(v, v+) + d`` on globally averaged features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import AusilError
from ..model.head import AuSiLHead, l2_normalize
from .pools import TripletPool
from .reports import MiningReport


def global_features(head: AuSiLHead, videos: Sequence[np.ndarray], device: torch.device) -> np.ndarray:
    """One L2-normalised vector per video: the average of its embedded segments."""
    out = np.zeros((len(videos), head.width), np.float32)
    with torch.no_grad():
        for number, video in enumerate(videos):
            embedded = head.embed(torch.from_numpy(video).to(device))
            out[number] = l2_normalize(embedded.mean(0)).cpu().numpy()
    return out


def mine_hard_negatives(
    pool: TripletPool,
    features: np.ndarray,
    margin: float = 0.2,
    fallback: int = 8,
    limit: int = 256,
) -> tuple[list[np.ndarray], MiningReport]:
    """Per pair, the negatives with ``D(v, v−) < D(v, v+) + margin`` (Euclidean, global features).

    Windows of the anchor's own recording must also be no closer than the positive: music repeats
    (choruses, loops), and a window that looks more like the anchor than its own source probably is
    the same audio. Pairs with no hard negative take their `fallback` nearest allowed ones; at most
    `limit` (the nearest) are kept per pair.
    """
    hard_sets, counts, fallbacks, positives = [], [], 0, []
    for (anchor, positive), allowed, same in zip(pool.pairs, pool.negatives, pool.same_group):
        d_pos = float(np.linalg.norm(features[anchor] - features[positive]))
        positives.append(d_pos)
        d_neg = np.linalg.norm(features[allowed] - features[anchor], axis=1)
        keep = ~same | (d_neg >= d_pos)
        allowed, d_neg = allowed[keep], d_neg[keep]
        if len(allowed) == 0:
            hard_sets.append(allowed)
            continue
        order = np.argsort(d_neg, kind="stable")
        hard = order[d_neg[order] < d_pos + margin][:limit]
        if len(hard) == 0:
            fallbacks += 1
            hard = order[:fallback]
        hard_sets.append(allowed[hard])
        counts.append(len(hard))
    if any(len(h) == 0 for h in hard_sets):
        raise AusilError("some training pairs have no allowed negative: give more recordings or videos")
    report = MiningReport(float(np.mean(counts)), fallbacks / max(1, len(pool)), float(np.mean(positives)))
    return hard_sets, report
