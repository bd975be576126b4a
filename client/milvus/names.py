"""Names for Milvus collections (`promote --milvus URI NAME TARGET`): a collection alias, which Milvus moves in
one step (`alter_alias`), and its history in a small collection of its own, `s3d_names` (a row per name).

Milvus has no lock a promote could take: two promotes of one name at once each move the alias atomically (the
last wins), and the history keeps the last one's row.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from s3d_retrieval.client.defaults import TIMEOUT
from s3d_retrieval.client.errors import Error
from s3d_retrieval.client.library.promote import NameError_, Step
from s3d_retrieval.client.library.store import Location
from s3d_retrieval.client.milvus.connection import STRONG, MilvusError, connect, literal, release, why

HISTORY = "s3d_names"  # the collection of the names' histories
HISTORY_BYTES = 65535


class MilvusName:
    def __init__(self, uri: str, alias: str, timeout: float = TIMEOUT):
        self.uri, self.alias, self.timeout = uri, alias, timeout
        self.client: Any = None

    def __str__(self) -> str:
        return f"{self.alias} ({self.uri})"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Connected for the promote (Milvus has no lock to take: see the module)."""
        with self.connected():
            yield

    @contextmanager
    def connected(self) -> Iterator[None]:
        self.client = connect(self.uri, self.timeout)
        try:
            yield
        except (Error, ValueError):  # the project's own (a refused gate, a name that is no name...): as they are
            raise
        except Exception as err:  # pymilvus's own
            raise MilvusError(f"Milvus at {self.uri} failed to move the name {self.alias!r} ({why(err)}); "
                              f"nothing was changed, run the same command again") from None
        finally:
            release(self.client, self.uri)
            self.client = None

    def points_at(self) -> Location | None:
        from s3d_retrieval.client.milvus.store import Milvus  # the store builds on connection, not on names

        try:
            return Milvus(self.uri, self.client.describe_alias(self.alias)["collection_name"])
        except Exception:  # no such alias
            pass
        if self.client.has_collection(self.alias):
            raise NameError_(f"{self.alias} is a collection at {self.uri}, not a name: promote never replaces it; "
                             f"give a new name (an alias it makes) and point readers at that")
        return None

    def point(self, target: Location) -> None:
        collection = self.same(target)
        if self.points_at() is None:
            self.client.create_alias(collection, self.alias)
        else:
            self.client.alter_alias(collection, self.alias)

    def history(self) -> list[Step]:
        if not self.client.has_collection(HISTORY):
            return []
        self.client.load_collection(HISTORY)
        rows = self.client.query(HISTORY, filter=f"name == {literal(self.alias)}", output_fields=["history"],
                                 **STRONG)
        return [Step(**step) for step in json.loads(rows[0]["history"])] if rows else []

    def record(self, history: list[Step]) -> None:
        text = json.dumps([s.__dict__ for s in history])
        while len(text.encode()) > HISTORY_BYTES:  # the oldest go first: a name keeps what fits
            history = history[1:]
            text = json.dumps([s.__dict__ for s in history])
        if not self.client.has_collection(HISTORY):
            self._make_history()
        self.client.upsert(HISTORY, [{"name": self.alias, "history": text, "marker": [0.0, 0.0]}])

    def _make_history(self) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False)
        schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=255)
        schema.add_field("history", DataType.VARCHAR, max_length=HISTORY_BYTES)
        schema.add_field("marker", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector in every collection
        index = self.client.prepare_index_params()
        index.add_index(field_name="marker", index_type="FLAT", metric_type="L2")
        try:
            self.client.create_collection(HISTORY, schema=schema, index_params=index)
        except Exception:
            if not self.client.has_collection(HISTORY):  # another promote made it at the same time
                raise

    def same(self, target: Location) -> str:
        collection = getattr(target, "collection", None)
        if collection is None:
            raise NameError_(f"{target}: a Milvus name points at a Milvus collection (--milvus URI NAME TARGET)")
        return collection

    def location(self, target: str) -> Location:
        from s3d_retrieval.client.milvus.store import Milvus

        return Milvus(self.uri, target)
