"""Query embeddings cached per (model version, query string): a page that re-asks a query, or several people
asking the same, costs no model request; an index of another model version (a promote) embeds anew."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from s3d_retrieval.client.api import Client
from s3d_retrieval.client.transport.session import Pinned

SIZE = 4096  # query strings kept (2 KB each)


class TextCache:
    def __init__(self, client: Client, size: int = SIZE):
        self.client, self.size = client, size
        self._store: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, version: int, sentences: Sequence[str]) -> np.ndarray:
        """[N, D] embeddings of `sentences` as `version` gives them; only the ones not cached are sent."""
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for sentence in dict.fromkeys(sentences):
                if (version, sentence) in self._store:
                    self._store.move_to_end((version, sentence))
                    found[sentence] = self._store[(version, sentence)]
        missing = [s for s in dict.fromkeys(sentences) if s not in found]
        if missing:
            fresh = dict(zip(missing, Pinned(self.client.session, version).embed_text(missing)))
            found.update(fresh)
            with self._lock:
                self._store.update(((version, s), e) for s, e in fresh.items())
                while len(self._store) > self.size:
                    self._store.popitem(last=False)
        return np.stack([found[s] for s in sentences])
