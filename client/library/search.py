"""The `search` verb: videos -> windows (reader) -> embeddings (mapper) -> ranked matches (writer is report)."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from s3d_retrieval.client.decode.video import Sampling, VideoError
from s3d_retrieval.client.library.filters import Filters
from s3d_retrieval.client.library.like import Like, LikeError, Source
from s3d_retrieval.client.library.moments import Moment
from s3d_retrieval.client.library.rank import Match, Windows, rank
from s3d_retrieval.client.library.store import Store, View
from s3d_retrieval.client.library.stream import embed_stream
from s3d_retrieval.client.transport.session import Pinned


@dataclass
class Result:
    queries: list[str]
    matches: list[list[Match]]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (video, why)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        """The document `search --json` prints and `/api/search` answers."""
        return {"results": [{"query": q, "matches": [_match(m) for m in matches]}
                            for q, matches in zip(self.queries, self.matches)],
                "errors": [{"video": video, "error": why} for video, why in self.errors],
                "warnings": list(self.warnings)}


def _moment(m: Moment) -> dict:
    return {"start": round(m.start, 3), "end": round(m.end, 3), "score": round(m.score, 6),
            "window": {"start": round(m.window[0], 3), "end": round(m.window[1], 3)}}


def _match(m: Match) -> dict:
    """`start`/`end`: the best moment's span; `score` and `window`: its best window, which ranks the video (the
    video's best window; for a like, the best outside the moment asked about); `moments`: every moment found,
    best first (the first is the one above)."""
    best = _moment(m.moments[0])
    return {"video": m.video, **best, "moments": [best, *map(_moment, m.moments[1:])]}


def embed_videos(session: Pinned, paths: Sequence[str], sampling: Sampling,
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
Ranker = Callable[[np.ndarray, int, int], list[list[Match]]]  # (query embeddings, videos, moments each) -> matches


def rank_queries(embed_text: EmbedText, queries: Sequence[str], likes: Sequence[Like], source: Source,
                 ranker: Ranker, top: int, moments: int, result: Result) -> Result:
    """Rank for each text query (embedded, warned about when no word of it is known) and each liked moment
    (`source` gives its video's windows), with `ranker`; a like whose video cannot be read gets no matches and
    an error."""
    if queries:
        texts = embed_text([*queries, ""])
        result.matches += ranker(texts[:-1], top, moments)
        result.warnings += [f"query {q!r} has no word the model knows: its ranking means nothing"
                            for q in unknown_word_queries(queries, texts[:-1], texts[-1])]
    asked = []
    for like in likes:
        try:
            asked.append((like, *like.resolve(*source(like))))
        except VideoError as err:  # its file cannot be read: said with the other files, the rest goes on
            why = (like.video, str(err).removeprefix(f"{like.video}: "))
            result.errors += [] if why in result.errors else [why]
    found = iter(ranker(np.stack([e for _, e, _ in asked]), top + 1, moments + 1) if asked else [])
    resolved = {like: itself for like, _, itself in asked}
    result.matches += [like.others(next(found), resolved[like], top, moments) if like in resolved else []
                       for like in likes]
    return result


def _labels(queries: Sequence[str], likes: Sequence[Like]) -> list[str]:
    return [*queries, *map(str, likes)]


def search(session: Pinned, queries: Sequence[str], paths: Sequence[str], sampling: Sampling, top: int = 5,
           moments: int = 1, likes: Sequence[Like] = ()) -> Result:
    """Rank video files (decoded and embedded now) for each query; a liked video not among them is embedded
    too, as a query only."""
    result = Result(_labels(queries, likes), [])
    windows = embed_videos(session, paths, sampling, result.errors)

    def source(like: Like) -> tuple[np.ndarray, np.ndarray]:
        rows = next((windows.rows(p) for p in windows.videos if like.same_video(p)), np.zeros(0, np.int64))
        if len(rows):
            return windows.embeddings[rows], windows.spans[rows]
        failed = next((why for p, why in result.errors if like.same_video(p)), None)
        if failed:  # one of the videos searched, already found unreadable
            raise VideoError(f"{like.video}: {failed}")
        return embed_one(session, like.video, sampling)

    return rank_queries(session.embed_text, queries, likes, source,
                        lambda found, count, each: rank(found, windows, count, each), top, moments, result)


def embed_one(session: Pinned, video: str, sampling: Sampling) -> tuple[np.ndarray, np.ndarray]:
    """One video decoded and embedded now (a liked moment's video outside the searched ones); VideoError if it
    cannot be read."""
    errors: list[tuple[str, str]] = []
    windows = embed_videos(session, [video], sampling, errors)
    if errors:
        raise VideoError(f"{video}: {errors[0][1]}")
    return windows.embeddings, windows.spans


def indexed(view: View) -> Source:
    """A liked moment's windows from the index (the UI's source: only indexed videos)."""
    def source(like: Like) -> tuple[np.ndarray, np.ndarray]:
        found = view.windows_of(os.path.abspath(like.video))
        if found is None:
            raise LikeError(f"like {like.video}: not a video of this index; give a path the index holds")
        return found
    return source


def search_view(embed_text: EmbedText, queries: Sequence[str], view: View, top: int = 5,
                filters: Filters = Filters(), moments: int = 1, likes: Sequence[Like] = (),
                source: Source | None = None) -> Result:
    """Rank the videos of an index as a reader sees it (what `search --index` and the UI share); says once when
    the search structure is behind the index. A liked moment's windows come from `source` (default: the
    index's)."""
    result = rank_queries(embed_text, queries, likes, source or indexed(view),
                          lambda found, count, each: view.search(found, count, filters, each),
                          top, moments, Result(_labels(queries, likes), []))
    if view.stale:
        result.warnings.append(view.stale)
    return result


def search_index(session: Pinned, queries: Sequence[str], store: Store, view: View, top: int = 5,
                 filters: Filters = Filters(), moments: int = 1, likes: Sequence[Like] = (),
                 embed_text: EmbedText | None = None) -> Result:
    """Rank the videos of an index (`view`, read from `store`) for each query without writing anything, the
    queries embedded by `session`'s version, the index's (its caller checked that it is served). A liked video the
    index lacks is decoded and embedded now with the index's sampling. `embed_text`: given by a caller that embedded
    the text already (the asyncio client)."""
    from_index = indexed(view)

    def source(like: Like) -> tuple[np.ndarray, np.ndarray]:
        try:
            return from_index(like)
        except LikeError:  # not indexed: decoded with the index's sampling
            return embed_one(session, like.video, store.sampling)

    return search_view(embed_text or session.embed_text, queries, view, top, filters, moments, likes, source)
