"""Ranking: raw dot-product scores (the model's own similarity), a video scoring as its best window, found at
its moments (`moments`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s3d_retrieval.client.library.moments import Moment, find


@dataclass(frozen=True)
class Match:
    video: str
    moments: tuple[Moment, ...]  # best first (by their best window)

    @property
    def score(self) -> float:
        """The best moment's best window's score, which ranks the video: its best window (for a like, the best
        outside the moment asked about)."""
        return self.moments[0].score

    @property
    def start(self) -> float:
        """Seconds: the best moment's span."""
        return self.moments[0].start

    @property
    def end(self) -> float:
        return self.moments[0].end


@dataclass
class Windows:
    """Embedded windows of many videos; rows are grouped by video (`owner` is non-decreasing)."""

    videos: list[str]
    embeddings: np.ndarray  # [N, D] float32
    owner: np.ndarray  # [N] index into `videos`
    spans: np.ndarray  # [N, 2] start, end seconds

    def rows(self, video: str) -> np.ndarray:
        """Row numbers of `video`'s windows (empty if it has none)."""
        if video not in self.videos:
            return np.zeros(0, np.int64)
        return np.flatnonzero(self.owner == self.videos.index(video))

    @classmethod
    def join(cls, parts: list[tuple[str, np.ndarray, list[tuple[float, float]]]]) -> Windows:
        """From (video, embeddings [W, D], spans) per video."""
        if not parts:
            return cls([], np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros((0, 2)))
        return cls([p for p, _, _ in parts], np.concatenate([e for _, e, _ in parts]).astype(np.float32),
                   np.concatenate([np.full(len(e), i) for i, (_, e, _) in enumerate(parts)]),
                   np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1, 2) for _, _, s in parts]))


def best_per_video(scores: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Window scores [Q, N] grouped by `owner` -> each video's best score [Q, V], and each video's first row."""
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    return np.maximum.reduceat(scores, starts, axis=1), starts


def rank(queries: np.ndarray, windows: Windows, top: int, moments: int = 1) -> list[list[Match]]:
    """For each query embedding [Q, D], the `top` videos by their best window's score, best first, each with up
    to `moments` moments."""
    if not windows.videos:
        return [[] for _ in range(len(queries))]
    scores = queries.astype(np.float32) @ windows.embeddings.T  # [Q, N]
    best, starts = best_per_video(scores, windows.owner)  # [Q, videos]
    ends = np.r_[starts[1:], len(windows.owner)]
    top = min(top, best.shape[1])
    results = []
    for q in range(len(queries)):
        chosen = np.argpartition(-best[q], top - 1)[:top] if top < best.shape[1] else np.arange(best.shape[1])
        chosen = chosen[np.argsort(-best[q, chosen], kind="stable")]
        matches = []
        for v in chosen:
            rows = slice(starts[v], ends[v])
            found = find(windows.embeddings[rows], windows.spans[rows], queries[q], moments)
            matches.append(Match(windows.videos[windows.owner[starts[v]]], tuple(found)))
        results.append(sorted(matches, key=lambda m: -m.score))  # as its moments score it (the same order, or a tie)
    return results
