"""The `search` verb: videos -> windows (reader) -> embeddings (mapper) -> ranked matches (writer is report)."""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from client.decode.video import Sampling
from client.library.index import Index
from client.library.rank import Match, Windows, rank
from client.library.stream import embed_stream
from client.library.view import IndexView, open_view
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


EmbedText = Callable[[Sequence[str]], np.ndarray]  # sentences -> [N, D]: `Session.embed_text`, or a cache of it


def rank_queries(embed_text: EmbedText, queries: Sequence[str], ranker: Callable[[np.ndarray], list[list[Match]]],
                 result: Result) -> Result:
    """Embed the queries, rank with `ranker` (query embeddings -> matches), warn about queries with no known word."""
    texts = embed_text([*queries, ""])
    result.matches = ranker(texts[:-1])
    result.warnings += [f"query {q!r} has no word the model knows: its ranking means nothing"
                        for q in unknown_word_queries(queries, texts[:-1], texts[-1])]
    return result


@dataclass(frozen=True)
class Filters:
    """Which indexed videos a search may return. Applied before ranking, so they never return too few."""

    under: tuple[str, ...] = ()  # folders (any of them)
    glob: str | None = None  # fnmatch pattern on the whole path
    min_duration: float | None = None  # seconds
    max_duration: float | None = None

    def accepts(self, path: str, duration: float) -> bool:
        folders = [os.path.abspath(u).rstrip("/") + "/" for u in self.under]
        return ((not folders or any(path.startswith(f) for f in folders))
                and (self.glob is None or fnmatch.fnmatchcase(path, self.glob))
                and (self.min_duration is None or duration >= self.min_duration)
                and (self.max_duration is None or duration <= self.max_duration))

    def predicate(self) -> Callable[[str, float], bool] | None:
        """`accepts`, or None when nothing is filtered."""
        return None if self == Filters() else self.accepts


def search(session: Session, queries: Sequence[str], paths: Sequence[str], sampling: Sampling,
           top: int = 5) -> Result:
    """Rank video files (decoded and embedded now) for each query."""
    result = Result(list(queries), [])
    windows = embed_videos(session, paths, sampling, result.errors)
    return rank_queries(session.embed_text, queries, lambda texts: rank(texts, windows, top), result)


def version_warnings(used: set[int], served: int) -> list[str]:
    """What to say when an index's embeddings came from another model version than the one served."""
    if not used - {served}:
        return []
    return [f"the index holds embeddings of model version(s) {sorted(used)} but version {served} is served: "
            f"re-run `index` on the same files to refresh them"]


def search_view(embed_text: EmbedText, queries: Sequence[str], view: IndexView, top: int = 5,
                filters: Filters = Filters()) -> Result:
    """Rank the videos of an index as a reader sees it (what `search --index` and the UI share); says once when
    the search structure is behind the index."""
    result = rank_queries(embed_text, queries, lambda texts: view.search(texts, top, filters.predicate()),
                          Result(list(queries), []))
    if view.stale:
        result.warnings.append(view.stale)
    return result


def search_index(session: Session, queries: Sequence[str], index: Index, top: int = 5,
                 filters: Filters = Filters(), kind: str | None = None, nprobe: int | None = None) -> Result:
    """Rank the videos of an index (open for reading) for each query, searched as `kind` asks (exact or
    approximate, see `vectors`) without writing a file; warns if they were embedded by another model version."""
    view = open_view(index, kind, nprobe)
    warnings = version_warnings({e.model_version for e in view.entries.values()}, session.ensure_ready())
    result = search_view(session.embed_text, queries, view, top, filters)
    result.warnings[:0] = warnings
    return result
