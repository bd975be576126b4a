"""The index as the search service sees it: loaded once, kept in memory, reloaded when a writer commits.

A writer (`index`, `merge`, `remove`) moves the index's generation counter in each commit and brings the search
structure up to date when it finishes. The service reads the counter (one SQLite row) at most every `check_every` seconds;
when it moved (or, while the structure is behind, when a writer rebuilt it), the request that noticed loads the
new state while the others keep answering from the old one. The service is a reader: it never writes a file.
While the structure is behind, the videos it lacks are scored exactly (`client.library.view`), and
`/api/health` says so.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from s3d_retrieval.client.library import vectors
from s3d_retrieval.client.library.index import Entry, Index
from s3d_retrieval.client.library.view import IndexView, open_view


class NotServed(Exception):
    """A file the service will not send; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Snapshot:
    view: IndexView  # the entries at one generation, and how to search them
    versions: set[int]  # model versions that embedded the entries
    roots: list[str]  # real folders whose files may be sent

    @property
    def generation(self) -> str:
        return self.view.generation

    @property
    def entries(self) -> dict[str, Entry]:  # path -> entry: the only files the service sends
        return self.view.entries


class Catalog:
    def __init__(self, folder: Path, model: str, roots: list[Path] | None = None, check_every: float = 1.0):
        """`roots`: folders whose files may be sent (default: the deepest folder holding every indexed video);
        a video reached through a symbolic link out of them is refused."""
        self.folder, self.model, self.check_every = Path(folder), model, check_every
        self._roots = [os.path.realpath(r) for r in roots] if roots else None
        self._snapshot: Snapshot | None = None
        self._checked = float("-inf")
        self._loading = threading.Lock()

    def generation(self) -> str:
        """The index's generation counter (read-only: one SQLite row)."""
        with Index(self.folder, self.model, read_only=True) as index:
            return index.generation()

    def load(self) -> Snapshot:
        """Read the entries and load the search structure as far as it holds them."""
        before = self._snapshot.view.structure if self._snapshot else None
        with Index(self.folder, self.model, read_only=True) as index:
            view = open_view(index, loaded=before)
        versions = {e.model_version for e in view.entries.values()}
        self._snapshot = Snapshot(view, versions, self._library(view.entries))
        return self._snapshot

    def current(self) -> Snapshot:
        """The loaded state; loaded anew first when a writer committed since (checked at most every
        `check_every` seconds). While one request loads, the others answer from the state before."""
        now = time.monotonic()
        if self._snapshot is not None and now - self._checked < self.check_every:
            return self._snapshot
        if not self._loading.acquire(blocking=self._snapshot is None):
            return self._snapshot
        try:
            self._checked = now
            if self._snapshot is None or self._moved(self._snapshot):
                self.load()
        finally:
            self._loading.release()
        return self._snapshot

    def _moved(self, snapshot: Snapshot) -> bool:
        """A writer committed, or (while the structure is behind) rebuilt it."""
        if self.generation() != snapshot.generation:
            return True
        built = vectors.read_manifest(self.folder) if snapshot.view.stale else None
        return bool(built) and built["generation"] == snapshot.generation

    def _library(self, entries: dict[str, Entry]) -> list[str]:
        """The real folders whose files may be sent: `--library`, else the deepest folder holding every entry."""
        if self._roots is not None:
            return self._roots
        folders = [os.path.dirname(p) for p in entries]
        return [os.path.realpath(os.path.commonpath(folders))] if folders else []

    def media(self, video: str) -> str:
        """The file to send for `video`: only a path of the index, exactly as indexed, still inside the library
        once links are resolved, and still the file that was indexed (same size and modification time)."""
        snapshot = self.current()
        entry = self.entry(video, snapshot)
        if entry is None:
            raise NotServed(404, f"{video!r} is not a video of this index; use a path from /api/videos")
        real = os.path.realpath(video)
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in snapshot.roots):
            raise NotServed(403, f"{video!r} resolves outside the library ({real}); start the UI with "
                                 f"--library FOLDER to serve files there")
        try:
            stat = os.stat(real)
        except OSError as err:
            raise NotServed(404, f"{video!r} cannot be read now ({err.strerror}); run index again") from None
        if (stat.st_size, stat.st_mtime) != (entry.size, entry.mtime) and not self._touched(entry, stat):
            raise NotServed(409, f"{video!r} changed since it was indexed; run index again to serve it")
        return real

    def entry(self, video: str, snapshot: Snapshot) -> Entry | None:
        """The video's entry as the service knows it (None: not a video of the index)."""
        return snapshot.entries.get(video)

    def _touched(self, loaded: Entry, stat: os.stat_result) -> bool:
        """The file as `index` last recorded it, with the loaded entry's content: a re-run that found its bytes
        unchanged records a new modification time without a new generation, so the loaded entry can be older."""
        with Index(self.folder, self.model, read_only=True) as index:
            now = index.entry(loaded.path)
        return now is not None and now.sha256 == loaded.sha256 and (stat.st_size, stat.st_mtime) == (now.size, now.mtime)
