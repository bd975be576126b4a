"""What a reader searches: the index at one generation, never a file written.

The built search structure (`vectors`) answers for the videos it holds as they are now; the videos it lacks
(committed since it was built, or a structure that was never built) are scored exactly from their shards, one
shard at a time, and videos it holds that were removed or replaced since are left out. So a reader beside a
writer answers correctly at every moment, and says once how far the structure is behind; a writer brings it up
to date every few commits of a long run and when the run ends (`indexing`), so the videos scored the slow way
stay few.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from s3d_retrieval.client.library import vectors
from s3d_retrieval.client.library.filters import Filters
from s3d_retrieval.client.library.rank import Match, Part, rank_groups
from s3d_retrieval.client.library.store import Entry
from s3d_retrieval.client.library.vectors import VectorSearch

if TYPE_CHECKING:
    from s3d_retrieval.client.library.index import Index

ATTEMPTS = 3  # reads of a structure that a writer replaced meanwhile


@dataclass
class IndexView:
    generation: str
    entries: dict[str, Entry]
    structure: VectorSearch | None
    held: np.ndarray | None  # structure video numbers still current (None: all of them)
    missing: list[tuple[Entry, np.ndarray, np.ndarray]]  # entries the structure lacks, with their windows
    stale: str | None  # why the structure is behind the entries, else None
    windows: int = 0  # of the entries
    model_version: int | None = None  # the version that embedded them
    _numbers: dict[str, int] | None = field(default=None, repr=False)  # path -> structure video number, when asked

    @property
    def videos(self) -> int:
        return len(self.entries)

    @property
    def kind(self) -> str:
        return self.structure.kind if self.structure else "exact"

    def entry(self, path: str) -> Entry | None:
        return self.entries.get(path)

    def search(self, queries: np.ndarray, top: int, filters: Filters = Filters(),
               moments: int = 1) -> list[list[Match]]:
        """Each query's `top` videos of those `filters` accept, by their best window, each with up to `moments`
        moments."""
        found: list[list[Match]] = [[] for _ in queries]
        if self.structure is not None and len(self.structure.videos):
            allowed = self.structure.select(filters)  # vectorised over the segments' sorted paths
            numbers = self.held
            if allowed is not None:
                numbers = np.flatnonzero(allowed) if numbers is None else numbers[allowed[numbers]]
            if numbers is None or len(numbers):
                found = self.structure.search(queries, top, numbers, moments)
        extra = [(e, emb, spans) for e, emb, spans in self.missing if filters.accepts(e.path, e.duration)]
        if extra:
            exact = rank_groups(queries, _by_shard(extra), top, moments)
            found = [sorted(a + b, key=lambda m: -m.score)[:top] for a, b in zip(found, exact)]
        return found

    def windows_of(self, path: str) -> tuple[np.ndarray, np.ndarray] | None:
        """A video's window embeddings [W, D] and spans [W, 2] as this view holds them (None: not indexed)."""
        for entry, embeddings, spans in self.missing:
            if entry.path == path:
                return np.asarray(embeddings), np.asarray(spans)
        if self.structure is None or path not in self.entries:
            return None
        if self._numbers is None:  # once per view: a large index has many videos to look through
            numbers = self.held if self.held is not None else np.flatnonzero(~self.structure.dead)
            self._numbers = {self.structure.videos[n][0]: int(n) for n in numbers}
        number = self._numbers.get(path)
        return None if number is None else self.structure.windows_of(number)


def _by_shard(missing: list[tuple[Entry, np.ndarray, np.ndarray]]) -> Iterator[list[Part]]:
    """The videos grouped by the shard file holding their windows: one shard's windows are read at a time."""
    groups: dict[str, list[Part]] = defaultdict(list)
    for entry, embeddings, spans in missing:
        groups[entry.shard].append((entry.path, embeddings, spans))
    return iter(groups.values())


def _with_windows(index: Index, entries: list[Entry]) -> list[tuple[Entry, np.ndarray, np.ndarray]]:
    return [(e, emb, spans) for e, (_, emb, spans) in zip(entries, index.parts(entries))]


def open_view(index: Index, kind: str | None = None, nprobe: int | None = None,
              loaded: VectorSearch | None = None) -> IndexView:
    """The index's entries (one read transaction) and the structure as far as it still holds them. `loaded`: a
    structure loaded before: kept whole if unchanged, else its segments still named are reused, so a reload
    after a commit costs the entries and what changed, not every faiss file."""
    for _ in range(ATTEMPTS - 1):
        try:
            return _view(index, kind, nprobe, loaded)
        except (OSError, KeyError, ValueError, RuntimeError):  # a writer changed a file while it was read (faiss
            pass                                               # says RuntimeError): read everything again
    return _view(index, kind, nprobe, loaded)


def _view(index: Index, kind: str | None, nprobe: int | None, loaded: VectorSearch | None) -> IndexView:
    generation, entries = index.snapshot()
    built = vectors.read_manifest(index.folder)
    structure = None
    if loaded is not None and built == loaded.manifest and loaded.asked == (kind, nprobe):
        structure = loaded
    elif built and "segments" in built:  # one of an older version's format is not used: a writer rebuilds it
        structure = VectorSearch(index.folder, nprobe, kind, loaded)
    windows = sum(e.row_count for e in entries.values())
    version = index.model_version
    if structure is None:
        return IndexView(generation, entries, None, None, _with_windows(index, list(entries.values())),
                         "no search structure has been built yet" if entries else None, windows, version)
    if structure.manifest["generation"] == generation:
        return IndexView(generation, entries, structure, None, [], None, windows, version)
    now = {path: e.placement for path, e in entries.items()}
    held = vectors.still_held(structure.videos, structure.placements, structure.dead, now)
    kept = {structure.videos[n][0] for n in held}
    missing = _with_windows(index, [e for path, e in entries.items() if path not in kept])
    stale = (f"the search structure is behind the index (built at generation {structure.manifest['generation']}, "
             f"now {generation}): {len(missing)} of {len(entries)} videos are scored exactly from their shards "
             f"until a writer (index, merge, remove) brings it up to date")
    return IndexView(generation, entries, structure, held, missing, stale, windows, version)
