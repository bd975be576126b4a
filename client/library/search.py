"""The `search` verb: videos -> windows (reader) -> embeddings (mapper) -> ranked matches (writer is report)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from client.decode.video import Sampling
from client.library.index import Index
from client.library.rank import Match, Windows, rank
from client.library.stream import embed_stream
from client.transport.session import Session


@dataclass
class Result:
    queries: list[str]
    matches: list[list[Match]]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (video, why)
    warnings: list[str] = field(default_factory=list)


def embed_videos(session: Session, paths: Sequence[str], sampling: Sampling,
                 errors: list[tuple[str, str]]) -> Windows:
    """Decode (in threads, ahead) and embed every video, streaming; unusable files go to `errors`."""
    parts = []
    for path, done in embed_stream(session, paths, str, sampling):
        if isinstance(done, Exception):
            errors.append((path, str(done).removeprefix(f"{path}: ")))
        else:
            parts.append((path, done.embeddings, done.spans))
    return Windows.join(parts)


def unknown_word_queries(queries: Sequence[str], embeddings: np.ndarray, empty: np.ndarray) -> list[str]:
    """Queries that embed exactly as the empty sentence: none of their words is in the vocabulary."""
    return [q for q, e in zip(queries, embeddings) if np.array_equal(e, empty)]


def rank_queries(session: Session, queries: Sequence[str], windows: Windows, top: int, result: Result) -> Result:
    """Embed the queries, rank `windows` for each, and warn about queries with no known word."""
    texts = session.embed_text([*queries, ""])
    result.matches = rank(texts[:-1], windows, top)
    result.warnings += [f"query {q!r} has no word the model knows: its ranking means nothing"
                        for q in unknown_word_queries(queries, texts[:-1], texts[-1])]
    return result


def search(session: Session, queries: Sequence[str], paths: Sequence[str], sampling: Sampling,
           top: int = 5) -> Result:
    """Rank video files (decoded and embedded now) for each query."""
    result = Result(list(queries), [])
    windows = embed_videos(session, paths, sampling, result.errors)
    return rank_queries(session, queries, windows, top, result)


def search_index(session: Session, queries: Sequence[str], index: Index, top: int = 5) -> Result:
    """Rank the videos of an index for each query; warns if they were embedded by another model version."""
    result = Result(list(queries), [])
    served, used = session.ensure_ready(), index.model_versions()
    if used - {served}:
        result.warnings.append(f"the index holds embeddings of model version(s) {sorted(used)} but version {served} "
                               f"is served: re-run `index` on the same files to refresh them")
    return rank_queries(session, queries, index.windows(), top, result)
