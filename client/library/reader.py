"""A store kept open by a long-lived process (an application's `Client`, the search page): its views are loaded
once and loaded again only when the store changed, so a search costs the search, not reading the index.

Whether the store changed is asked at most every `check_every` seconds (0: before every search, one SQLite row for
a folder). While one caller loads the new view, the others keep answering from the one before.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

from s3d_retrieval.client.library.store import Store, View

KINDS = 4  # views kept per store, one per way of searching asked (kind, nprobe)


class Reader:
    def __init__(self, store: Store, check_every: float = 0.0):
        self.store, self.check_every = store, check_every
        self._views: OrderedDict[tuple[str | None, int | None], tuple[View, float]] = OrderedDict()
        self._loading = threading.Lock()

    def current(self, kind: str | None = None, nprobe: int | None = None) -> View:
        """The store as it is now, searched as `kind` and `nprobe` ask (None: as built)."""
        key = (kind, nprobe)
        kept = self._views.get(key)
        if kept is not None and time.monotonic() - kept[1] < self.check_every:
            return kept[0]
        if not self._loading.acquire(blocking=kept is None):
            return kept[0]  # another caller is loading: the view before answers meanwhile
        try:
            checked = time.monotonic()
            kept = self._views.get(key)
            if kept is not None and not self.store.outdated(kept[0]):
                view = kept[0]
            else:  # a view searched another way lends its segments and inverted files: memory is not doubled
                lender = kept or next(reversed(self._views.values()), None)
                view = self.store.view(lender[0] if lender else None, kind, nprobe)
            self._views[key] = (view, checked)
            self._views.move_to_end(key)
            while len(self._views) > KINDS:
                self._views.popitem(last=False)
        finally:
            self._loading.release()
        return view

    def close(self) -> None:
        self._views.clear()
        self.store.close()
