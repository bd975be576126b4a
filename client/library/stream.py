"""Videos -> embeddings with bounded memory: windows stream from decoder threads to the server.

Decoders run ahead by a bounded number of windows (`client.decode.ahead`), windows are grouped into requests
of `windows_per_request`, at most `concurrency` requests are in flight, and only the embeddings (512 floats
per window) and spans of a video are kept. Every request names the session's model version (`Pinned`), so one
video never mixes versions; one the server answered with non-finite values (NaN, infinity) is an error for that
video: such a window would win every ranking.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import numpy as np

from s3d_retrieval.client.decode.ahead import decode_ahead
from s3d_retrieval.client.decode.video import Sampling, VideoError, Window, windows
from s3d_retrieval.client.transport.session import Pinned

T = TypeVar("T")


@dataclass
class Embedded:
    embeddings: np.ndarray  # [W, D] float32
    spans: np.ndarray  # [W, 2] start, end seconds
    version: int  # the model version that embedded every window


def embed_video(session: Pinned, stream: Iterator[Window]) -> Embedded:
    """Embed one video's windows as they come."""
    spans: list[tuple[float, float]] = []
    step = max(1, session.options.windows_per_request)

    def batches() -> Iterator[np.ndarray]:
        while chunk := list(islice(stream, step)):
            spans.extend((w.start, w.end) for w in chunk)
            yield np.stack([w.frames for w in chunk])

    parts = [embeddings for embeddings, _ in session.embed_batches(batches())]
    return Embedded(np.concatenate(parts).astype(np.float32), np.asarray(spans, np.float64), session.version)


def embed_stream(session: Pinned, items: Iterable[T], path: Callable[[T], str], sampling: Sampling,
                 videos_ahead: int = 2) -> Iterator[tuple[T, Embedded | VideoError]]:
    """Each item's embeddings (or the VideoError that made its file unusable), in order."""
    buffer = 2 * max(1, session.options.windows_per_request)
    for item, feed in decode_ahead(items, lambda i: windows(path(i), sampling), videos_ahead, buffer):
        try:
            done = embed_video(session, feed)
        except VideoError as err:
            yield item, err
            continue
        bad = int((~np.isfinite(done.embeddings).all(axis=1)).sum())
        yield item, done if not bad else VideoError(
            f"{path(item)}: the model server answered {bad} of its {len(done.embeddings)} windows with "
            f"non-finite values (NaN or infinity); check model version {done.version}")
