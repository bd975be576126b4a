"""A store kept open by a long-lived process (an application's `Client`, the search page): its views are loaded
once and loaded again only when the store changed, so a search costs the search, not reading the index.

Whether the store changed, and whether the name it was opened by now points at another index (`promote`), is
asked at most every `check_every` seconds (0: before every search; one SQLite row and a path for a folder). While
one caller loads the new view, the others keep answering from the one before; after a promote, a request in
flight finishes on the index it began on: the store the last promote left stays open (no views), and the one
before it is closed when a promote comes again, so a long-lived reader holds two stores at most.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from s3d_retrieval.client.library.store import Store, View

KINDS = 4  # views kept per store, one per way of searching asked (kind, nprobe)


class Current(NamedTuple):
    """A view and the store it was read from, taken together (a promote may switch the store meanwhile)."""

    store: Store
    view: View


class Reader:
    def __init__(self, open_store: Callable[[], Store], check_every: float = 0.0):
        """`open_store()`: the index, for reading, as its location (a name, perhaps) gives it now."""
        self.open_store, self.check_every = open_store, check_every
        self.store = open_store()
        self._left: Store | None = None  # the store the last promote left, kept for the requests still on it
        self._views: OrderedDict[tuple[str | None, int | None], tuple[Current, float]] = OrderedDict()
        self._loading = threading.Lock()

    def current(self, kind: str | None = None, nprobe: int | None = None) -> Current:
        """The index as it is now, searched as `kind` and `nprobe` ask (None: as built), with its store."""
        key = (kind, nprobe)
        kept = self._views.get(key)
        if kept is not None and time.monotonic() - kept[1] < self.check_every:
            return kept[0]
        if not self._loading.acquire(blocking=kept is None):
            assert kept is not None
            return kept[0]  # another caller is loading: the view before answers meanwhile
        try:
            checked = time.monotonic()
            if self.store.resolve() != self.store.target:  # the name now points at another index
                self._follow()
            kept = self._views.get(key)
            if kept is not None and not self.store.outdated(kept[0].view):
                now = kept[0]
            else:  # a view searched another way lends its segments and inverted files: memory is not doubled
                lender = kept or next(reversed(self._views.values()), None)
                now = Current(self.store, self.store.view(lender[0].view if lender else None, kind, nprobe))
            self._views[key] = (now, checked)
            self._views.move_to_end(key)
            while len(self._views) > KINDS:
                self._views.popitem(last=False)
        finally:
            self._loading.release()
        return now

    def _follow(self) -> None:
        """Open the index the name points at now; the store before stays open for requests still on its views."""
        fresh = self.open_store()
        if self._left is not None:  # two promotes ago: no request is still on it
            self._left.close()
        self._left, self.store = self.store, fresh
        self._views.clear()

    def close(self) -> None:
        self._views.clear()
        for store in (self._left, self.store):
            if store is not None:
                store.close()
