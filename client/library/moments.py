"""Moments: where in a video a query's event happens, as spans of windows, several per video.

A window (1.6 s in the demo, 3.2 s for the released model) is shorter than most events, so the best window
alone covers a part of one. The rule, for one video's window scores against a query (rows in time order):

1. Each window gets a *level*: the mean score of the windows covering its centre (itself and, when windows
   overlap, its neighbours): with overlapping windows it smooths the window-to-window noise; with windows one
   stride apart it is the window's own score.
2. The first moment starts at the video's best window (whose score ranks the video) and grows over the
   neighbouring windows whose level stays within `GROW` of the way from the seed's level down to the video's
   mean level: windows closer to the best than to the typical stay in.
3. Each window stands for its own share of time, from the midpoint with the previous window's centre to the
   midpoint with the next one's (the video's first and last windows reach their own edges), so a moment's span
   is the shares of its windows: with non-overlapping windows exactly the windows' union.
4. Further moments (`count` > 1, non-maximum suppression over spans): the best window not yet in a moment that
   stands on a peak of the levels (no neighbour higher) at least `PEAK` of the way from the video's mean level
   up to the first moment's, grown the same way but never into an earlier moment. So moments never overlap, a
   shoulder of a moment already found (a window next to it, on its slope) is not a second one, nor is a ripple of
   the background: fewer than `count` come back when the video has fewer such peaks. They are returned best
   first (by their best window), the first holding the video's best window.

`GROW` was chosen on the demo world's story videos (corpus seeds 0-7, 4 s events, 1.6 s windows at half-window
stride), where 0.15-0.25 all gave about the same figures; `make moments` measures seeds 0-4
(docs/explanation/benchmarks.md). It is a property of that synthetic world, not a measurement on real video.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROW = 0.2  # share of the way from a moment's seed level down to the video's mean level that still belongs to it
PEAK = 0.5  # share of the way from the video's mean level up to the first moment's that a further moment must reach
EDGE = 1e-6  # seconds: a window whose edge meets a centre covers it (half-window strides), whatever the rounding


@dataclass(frozen=True)
class Moment:
    start: float  # seconds: the span
    end: float
    score: float  # its best window's score
    window: tuple[float, float]  # its best window's own span, seconds


def levels(scores: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Each window's level: the mean score of the windows whose span covers its centre (starts and ends are
    non-decreasing, as a video's windows are)."""
    centres = spans.mean(axis=1)
    first = np.searchsorted(spans[:, 1], centres - EDGE, side="left")  # windows ending at or after the centre
    last = np.searchsorted(spans[:, 0], centres + EDGE, side="right")  # windows starting at or before it
    total = np.r_[0.0, np.cumsum(scores)]
    return (total[last] - total[first]) / (last - first)


def shares(spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each window's own share of time (start, end): cut at the midpoints between neighbouring centres."""
    centres = spans.mean(axis=1)
    cuts = (centres[1:] + centres[:-1]) / 2
    return np.r_[spans[0, 0], cuts], np.r_[cuts, spans[-1, 1]]


def find(embeddings: np.ndarray, spans: np.ndarray, query: np.ndarray, count: int = 1) -> list[Moment]:
    """Up to `count` moments of one video, best first, from its window `embeddings` [W, D] and `spans` [W, 2]
    (time order) against one `query` [D]. Every search path scores a video here, in one shape, so that they
    give the same moments to the last bit."""
    scores = (np.asarray(embeddings, np.float32) @ np.asarray(query, np.float32)).astype(np.float64)
    spans = np.asarray(spans, np.float64)
    level = levels(scores, spans)
    mean = level.mean()
    begin, finish = shares(spans)
    padded = np.r_[-np.inf, level, -np.inf]
    peak = (level >= padded[:-2]) & (level >= padded[2:])
    taken = np.zeros(len(scores), bool)
    found: list[Moment] = []
    at = int(np.argmax(scores))
    while True:
        floor = level[at] - GROW * (level[at] - mean)
        lo = hi = at
        while lo > 0 and not taken[lo - 1] and level[lo - 1] >= floor:
            lo -= 1
        while hi + 1 < len(scores) and not taken[hi + 1] and level[hi + 1] >= floor:
            hi += 1
        taken[lo: hi + 1] = True
        best = lo + int(np.argmax(scores[lo: hi + 1]))
        found.append(Moment(float(begin[lo]), float(finish[hi]), float(scores[best]),
                            (float(spans[best, 0]), float(spans[best, 1]))))
        if len(found) == 1:
            peak &= level >= mean + PEAK * (level[at] - mean)
        left = peak & ~taken
        if len(found) == count or not left.any():
            return sorted(found, key=lambda m: -m.score)
        at = int(np.argmax(np.where(left, scores, -np.inf)))


def inside(spans: np.ndarray, start: float, end: float) -> np.ndarray:
    """Positions of the windows whose centre lies in [start, end]; the nearest one if none does (a point in
    time, `start == end`, is the window centred nearest to it)."""
    centres = np.asarray(spans, np.float64).mean(axis=1)
    within = np.flatnonzero((centres >= start) & (centres <= end))
    return within if len(within) else np.array([int(np.argmin(np.abs(centres - (start + end) / 2)))])
