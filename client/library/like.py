"""More like this: a moment of a video as the query (video -> video, in the model's one space).

`VIDEO@SECONDS` is the window centred nearest that second, `VIDEO@START-END` the windows centred inside (the
nearest one if none is), their embeddings averaged. The moment itself is left out of the answer: a moment of
the same video overlapping the time those windows stand for is dropped (its video stays, ranked by its other
moments), so the list shows the other places that look like it.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from s3d_retrieval.client.library.moments import inside, shares
from s3d_retrieval.client.library.rank import Match
from s3d_retrieval.client.errors import Error


class LikeError(Error, ValueError):
    """A `--like` (or `like=`) that cannot be used; the message names it and says what to give."""


@dataclass(frozen=True)
class Like:
    video: str
    start: float  # seconds; start == end: a point in time
    end: float

    @classmethod
    def parse(cls, text: str) -> Like:
        video, at, when = text.rpartition("@")
        start, dash, end = when.partition("-")
        try:
            begin = float(start)
            finish = float(end) if dash else begin
        except ValueError:
            begin = finish = math.nan
        if not (video and at and math.isfinite(finish) and 0 <= begin <= finish):
            raise LikeError(f"like {text!r}: give VIDEO@SECONDS or VIDEO@START-END (seconds, start before end), "
                            f"e.g. clip.mp4@12.5")
        return cls(video, begin, finish)

    def __str__(self) -> str:
        return f"like {self.video}@{self.start:g}" + (f"-{self.end:g}" if self.end > self.start else "")

    def same_video(self, path: str) -> bool:
        return os.path.abspath(path) == os.path.abspath(self.video)

    def resolve(self, embeddings: np.ndarray, spans: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """On its video's windows: the query embedding (the mean of the windows taken) and the time they stand
        for (their shares: a time past the end is the last window's)."""
        rows = inside(spans, self.start, self.end)
        begin, finish = shares(np.asarray(spans, np.float64))
        return (np.asarray(embeddings[rows], np.float32).mean(axis=0),
                (float(begin[rows[0]]), float(finish[rows[-1]])))

    def others(self, matches: list[Match], itself: tuple[float, float], top: int, moments: int) -> list[Match]:
        """`matches` (asked for one more video and moment than wanted) without the moment `itself`: its video
        keeps its other moments, ranked by the best of them."""
        kept = []
        for m in matches:
            rest = [x for x in m.moments
                    if not (self.same_video(m.video) and x.start < itself[1] and x.end > itself[0])][:moments]
            if rest:
                kept.append(Match(m.video, tuple(rest)))
        return sorted(kept, key=lambda m: -m.score)[:top]


Source = Callable[[Like], tuple[np.ndarray, np.ndarray]]  # a like -> its video's window embeddings and spans
