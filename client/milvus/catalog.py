"""The search service over a Milvus store (`s3d-client ui --milvus URI`): nothing held in memory but the
connection, since Milvus answers for the newest commits itself; files are sent as for an index folder."""
from __future__ import annotations

import os
from pathlib import Path

from s3d_retrieval.client.library.index import Entry
from s3d_retrieval.client.milvus.reader import MilvusView
from s3d_retrieval.client.milvus.store import MilvusStore
from s3d_retrieval.client.ui.catalog import Catalog, Snapshot


class MilvusCatalog(Catalog):
    def __init__(self, store: MilvusStore, roots: list[Path] | None = None):
        """`roots`: folders whose files may be sent (default: the deepest folder holding every video stored when
        the service starts; give `--library` when the store grows elsewhere)."""
        self.store, self.folder = store, f"{store.uri} (collection {store.windows_name})"
        self._roots = [os.path.realpath(r) for r in roots] if roots else None
        if self._roots is None:  # the videos' deepest common folder (none yet: give --library)
            self._roots = self._library(store.entries())

    def current(self) -> Snapshot:
        return Snapshot(MilvusView(self.store), set(), self._roots)

    def entry(self, video: str, snapshot: Snapshot) -> Entry | None:
        now = self.store.current([video]).get(video)
        return now.entry if now else None

    def _touched(self, loaded: Entry, stat: os.stat_result) -> bool:
        return False  # the entry read for this request is the newest one
