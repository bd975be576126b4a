"""Ranking: raw dot-product scores (the model's own similarity), a video scoring as its best window, found at
its moments (`moments`)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    def join(cls, parts: Sequence[tuple[str, np.ndarray, np.ndarray | Sequence[tuple[float, float]]]]) -> Windows:
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


Part = tuple[str, np.ndarray, np.ndarray]  # (video, embeddings [W, D], spans [W, 2]): views, read when scored


def rank_groups(queries: np.ndarray, groups: Iterable[list[Part]], top: int, moments: int = 1) -> list[list[Match]]:
    """`rank` over videos given in groups (the windows of one shard file, say), scored one group at a time: memory
    holds one group's windows and a best score per video, never every window at once. Ties go to the video met
    first, as in `rank`."""
    queries = queries.astype(np.float32)
    parts: list[Part] = []
    best: list[np.ndarray] = []  # per group: [videos of the group, Q]
    for group in groups:
        group = [p for p in group if len(p[1])]
        if not group:
            continue
        block = np.concatenate([np.asarray(e) for _, e, _ in group]).astype(np.float32) @ queries.T  # [rows, Q]
        starts = np.cumsum([0] + [len(e) for _, e, _ in group[:-1]])
        best.append(np.maximum.reduceat(block, starts, axis=0))
        parts += group
    if not parts:
        return [[] for _ in queries]
    scores = np.concatenate(best).T  # [Q, videos]
    results = []
    for q, row in enumerate(scores):
        chosen = np.argsort(-row, kind="stable")[:top]
        found = [Match(parts[v][0], tuple(find(np.asarray(parts[v][1]), np.asarray(parts[v][2]), queries[q], moments)))
                 for v in chosen]
        results.append(sorted(found, key=lambda m: -m.score))
    return results
