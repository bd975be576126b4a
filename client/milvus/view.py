"""Searching a Milvus store: one answer per video by Milvus's grouping search on the windows' token (a video's
older or uncommitted windows carry other tokens: their groups are dropped here), filters as Milvus expressions
(then checked exactly, since LIKE is coarser than a glob), and each video's moments found from its windows as for
an index folder."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from s3d_retrieval.client.library.filters import Filters
from s3d_retrieval.client.library.moments import find
from s3d_retrieval.client.library.rank import Match
from s3d_retrieval.client.library.store import Entry
from s3d_retrieval.client.milvus.connection import STRONG, TOP_K, MilvusError, starts_with, why

if TYPE_CHECKING:
    from s3d_retrieval.client.milvus.store import MilvusStore


def expression(filters: Filters) -> str:
    """`filters` as a Milvus boolean expression that keeps at least every video they accept ("" keeps all)."""
    parts = []
    if filters.under:
        parts.append("(" + " or ".join(f"path like {starts_with(f)}" for f in filters.folders()) + ")")
    if filters.glob and (prefix := re.split(r"[*?\[]", filters.glob, maxsplit=1)[0]):
        parts.append(f"path like {starts_with(prefix)}")
    if filters.min_duration is not None:
        parts.append(f"duration >= {float(filters.min_duration)!r}")
    if filters.max_duration is not None:
        parts.append(f"duration <= {float(filters.max_duration)!r}")
    return " and ".join(parts)


class MilvusView:
    """What a reader searches in a store: committed videos only. Milvus answers for the newest commits itself,
    so a view is never behind (`stale` is None), never outdated, and holds nothing in memory."""

    generation, kind = "milvus", "milvus"
    stale: str | None = None

    def __init__(self, store: MilvusStore):
        self.store = store
        self.model_version = store.model_version

    @property
    def entries(self) -> Mapping[str, Entry]:
        """Every committed video (a read of all their rows: for listings, not for each search)."""
        return self.store.entries()

    def entry(self, path: str) -> Entry | None:
        return self.store.entry(path)

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
                raise MilvusError(f"Milvus at {self.store.uri} refused the search ({why(err)})") from None
            found = [h["entity"] for h in hits]
            current = self.store.current(sorted({e["path"] for e in found}))
            kept = [e for e in found if e["path"] in current and current[e["path"]].token == e["token"]
                    and filters.accepts(e["path"], current[e["path"]].entry.duration)][:top]
            if len(kept) >= top or len(hits) < limit or limit == TOP_K:
                break
            limit = min(TOP_K, limit * 2)  # stale versions or coarse filters took places: ask for more
        windows = self.store.windows([e["path"] for e in kept], current)
        matches = [Match(path, tuple(find(windows.embeddings[windows.rows(path)], windows.spans[windows.rows(path)],
                                          query, moments))) for path in windows.videos if len(windows.rows(path))]
        return sorted(matches, key=lambda m: -m.score)
