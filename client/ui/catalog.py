"""The index as the search service sees it: a store kept open (`client.library.reader`), its view loaded once and
loaded again when a writer changed the index; and which of its files the service may send.

A folder's writers (`index`, `merge`, `remove`) move the index's generation counter in each commit and bring the
search structure up to date as they go. The service reads the counter (one SQLite row) at most every `check_every`
seconds; when it moved (or, while the structure is behind, when a writer rebuilt it), the request that noticed
loads the new state while the others keep answering from the old one. A Milvus store answers for its newest
commits itself. The service is a reader: it never writes a file.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from s3d_retrieval.client.library.reader import Reader
from s3d_retrieval.client.library.store import Entry, Store, View


class NotServed(Exception):
    """A file the service will not send; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Snapshot:
    store: Store  # the index the view was read from (after a promote, not the one the name points at now)
    view: View  # the entries at one generation, and how to search them
    roots: list[str]  # real folders whose files may be sent

    @property
    def generation(self) -> str:
        return self.view.generation



class Catalog:
    def __init__(self, open_store: Callable[[], Store], roots: list[Path] | None = None, check_every: float = 1.0):
        """`open_store()`: the index opened for reading as its location gives it now (a name `promote` moves is
        followed within `check_every`); kept until `close`. `roots`: folders whose files may be sent (default: the
        deepest folder holding every indexed video); a video reached through a symbolic link out of them is
        refused."""
        self.reader = Reader(open_store, check_every)
        self._roots = [os.path.realpath(r) for r in roots] if roots else None
        self._snapshot: Snapshot | None = None

    @property
    def folder(self) -> str:
        """The index as messages name it (a name's target now)."""
        return self.reader.store.where

    def close(self) -> None:
        self.reader.close()

    def current(self) -> Snapshot:
        """The loaded state; loaded anew first when a writer committed since (checked at most every
        `check_every` seconds). While one request loads, the others answer from the state before."""
        now = self.reader.current()
        snapshot = self._snapshot
        if snapshot is None or snapshot.view is not now.view:
            snapshot = self._snapshot = Snapshot(now.store, now.view, self._library(now.view))
        return snapshot

    def _library(self, view: View) -> list[str]:
        """The real folders whose files may be sent: `--library`, else the deepest folder holding every entry."""
        if self._roots is not None:
            return self._roots
        folders = [os.path.dirname(p) for p in view.entries]
        return [os.path.realpath(os.path.commonpath(folders))] if folders else []

    def media(self, video: str) -> str:
        """The file to send for `video`: only a path of the index, exactly as indexed, still inside the library
        once links are resolved, and still the file that was indexed (same size and modification time)."""
        snapshot = self.current()
        entry = snapshot.view.entry(video)
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
        unchanged = (stat.st_size, stat.st_mtime) == (entry.size, entry.mtime)
        if not unchanged and not self._touched(snapshot.store, entry, stat):
            raise NotServed(409, f"{video!r} changed since it was indexed; run index again to serve it")
        return real

    @staticmethod
    def _touched(store: Store, loaded: Entry, stat: os.stat_result) -> bool:
        """The file as `index` last recorded it, with the loaded entry's content: a re-run that found its bytes
        unchanged records a new modification time without a new generation, so the loaded entry can be older."""
        now = store.entry(loaded.path)
        return now is not None and now.sha256 == loaded.sha256 and (stat.st_size, stat.st_mtime) == (now.size, now.mtime)
