"""Retrieval metrics the field reports (reference §5): recall at K and median/mean rank, from a score matrix,
and moment metrics (R@1 at temporal IoU thresholds, mean IoU)."""
from __future__ import annotations

import numpy as np

RECALL_AT = (1, 5, 10)
IOU_AT = (0.3, 0.5, 0.7)


def ranks(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1-based rank of each query's true item in `scores` [Q, V]: the items scoring strictly higher than the
    best-scoring true one, plus one. `truth` is an index per query [Q] or a mask of true items [Q, V] (several
    sentences per video: a video queried for text ranks as its best true sentence).

    Ties are resolved in the true item's favour: only strictly higher scores count.
    """
    scores = np.asarray(scores)
    mask = np.asarray(truth)
    if mask.ndim == 1:
        mask = np.zeros(scores.shape, bool)
        mask[np.arange(len(truth)), truth] = True
    best_true = np.where(mask, scores, -np.inf).max(axis=1)
    return (scores > best_true[:, None]).sum(axis=1) + 1


def summary(rank: np.ndarray) -> dict[str, float]:
    """{"R@1", "R@5", "R@10": fractions in [0, 1], "MdR": median rank, "MnR": mean rank}."""
    rank = np.asarray(rank)
    figures = {f"R@{k}": round(float(np.mean(rank <= k)), 6) for k in RECALL_AT}
    figures["MdR"] = float(np.median(rank))
    figures["MnR"] = round(float(np.mean(rank)), 6)
    return figures


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Temporal IoU of spans a [N, 2] and b [N, 2] (start, end seconds), row by row."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    inter = np.clip(np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    union = np.maximum(a[:, 1], b[:, 1]) - np.minimum(a[:, 0], b[:, 0])
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def moment_summary(overlaps: np.ndarray) -> dict[str, float]:
    """{"R@1,IoU>=t": share of queries whose best moment overlaps the truth by at least t, "mIoU"}."""
    overlaps = np.asarray(overlaps)
    figures = {f"R@1,IoU>={t}": round(float(np.mean(overlaps >= t)), 6) for t in IOU_AT}
    figures["mIoU"] = round(float(np.mean(overlaps)), 6)
    return figures
