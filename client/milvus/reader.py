"""Searching a Milvus store: one answer per video by Milvus's grouping search on the windows' token (a video's
older or uncommitted windows carry other tokens: their groups are dropped here), filters as Milvus expressions
(then checked exactly, since LIKE is coarser than a folder or a glob), and each video's moments found from its
windows as for an index folder."""
from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from s3d_retrieval.client.library.like import Like
from s3d_retrieval.client.library.moments import find
from s3d_retrieval.client.library.rank import Match
from s3d_retrieval.client.library.filters import Filters
from s3d_retrieval.client.library.index import Entry
from s3d_retrieval.client.library.search import EmbedText, Result, embed_one, rank_queries
from s3d_retrieval.client.milvus.store import STRONG, TOP_K, MilvusError, MilvusStore, _why, literal
from s3d_retrieval.client.transport.session import Session


def expression(filters: Filters) -> str:
    """`filters` as a Milvus boolean expression that keeps at least every video they accept ("" keeps all)."""
    parts = []
    if filters.under:
        folders = [os.path.abspath(u).rstrip("/") + "/%" for u in filters.under]
        parts.append("(" + " or ".join(f"path like {literal(f)}" for f in folders) + ")")
    if filters.glob and (prefix := re.split(r"[*?\[]", filters.glob, maxsplit=1)[0]):
        parts.append(f"path like {literal(prefix + '%')}")
    if filters.min_duration is not None:
        parts.append(f"duration >= {float(filters.min_duration)!r}")
    if filters.max_duration is not None:
        parts.append(f"duration <= {float(filters.max_duration)!r}")
    return " and ".join(parts)


class MilvusView:
    """What a reader searches in a store: committed videos only. Milvus answers for the newest commits itself,
    so a view is never behind (`stale` is None) and holds nothing in memory."""

    generation, kind, stale = "milvus", "milvus", None

    def __init__(self, store: MilvusStore):
        self.store = store

    @property
    def entries(self) -> dict[str, Entry]:
        """Every committed video (a read of all their rows: for listings, not for each search)."""
        return self.store.entries()

    @property
    def videos(self) -> int:
        return self.store.count(self.store.videos_name)

    @property
    def windows(self) -> int:
        """Windows stored (those of videos being written or replaced included)."""
        return self.store.count(self.store.windows_name)

    def windows_of(self, path: str) -> tuple[np.ndarray, np.ndarray] | None:
        """A committed video's window embeddings [W, D] and spans [W, 2], in time order (None: not stored)."""
        found = self.store.windows([path])
        return (found.embeddings, found.spans) if found.videos else None

    def search(self, queries: np.ndarray, top: int, filters: Filters = Filters(), moments: int = 1
               ) -> list[list[Match]]:
        """Each query's `top` committed videos that `filters` accept, by their best window, with moments."""
        return [self._one(np.asarray(q, np.float32), top, filters, moments) for q in queries]

    def _one(self, query: np.ndarray, top: int, filters: Filters, moments: int) -> list[Match]:
        limit, where = min(TOP_K, 2 * top), expression(filters)
        while True:
            try:
                [hits] = self.store.client.search(
                    self.store.windows_name, data=[query.tolist()], limit=limit, group_by_field="token",
                    filter=where, output_fields=["path", "token", "duration"], search_params={"metric_type": "IP"},
                    **STRONG)
            except Exception as err:
                raise MilvusError(f"Milvus at {self.store.uri} refused the search ({_why(err)})") from None
            found = [h["entity"] for h in hits]
            current = self.store.current(sorted({e["path"] for e in found}))
            kept = [e for e in found if e["path"] in current and current[e["path"]].token == e["token"]
                    and filters.accepts(e["path"], current[e["path"]].entry.duration)][:top]
            if len(kept) >= top or len(hits) < limit or limit == TOP_K:
                break
            limit = min(TOP_K, limit * 2)  # stale versions or coarse filters took places: ask for more
        found = self.store.windows([e["path"] for e in kept], current)
        matches = [Match(path, tuple(find(found.embeddings[found.rows(path)], found.spans[found.rows(path)], query,
                                          moments))) for path in found.videos if len(found.rows(path))]
        return sorted(matches, key=lambda m: -m.score)


def search_store(session: Session, queries: Sequence[str], store: MilvusStore, top: int = 5,
                 filters: Filters = Filters(), moments: int = 1, likes: Sequence[Like] = (),
                 embed_text: EmbedText | None = None, served: int | None = None) -> Result:
    """`search_index` for a Milvus store: rank its committed videos for each text query and liked moment (a
    liked video it lacks is decoded and embedded now with its sampling). No warning about model versions: that
    would read every video's row on each search."""
    view = MilvusView(store)

    def source(like: Like) -> tuple[np.ndarray, np.ndarray]:
        found = view.windows_of(os.path.abspath(like.video))
        return found if found is not None else embed_one(session, like.video, store.sampling)

    if served is None:
        session.ensure_ready()
    return rank_queries(embed_text or session.embed_text, queries, likes, source,
                        lambda found, count, each: view.search(found, count, filters, each), top, moments,
                        Result([*queries, *map(str, likes)], []))
