"""A Milvus collection pair holding an index: what `Index` is for a folder, for the writer and the reader.

- `NAME` (windows): one row per window: `path`, `token` (the video's version: a new one each time it is
  embedded), `start`/`end` seconds, `duration`, `vector` (the 512-d embedding, inner product). Rows are written
  first and are invisible until their video's row names their token.
- `NAME_videos` (one row per video, primary key `path`): size, mtime, sha256, model version, duration, rows and
  the current `token`. Writing it is the commit: a video becomes visible to search only once all its windows
  are stored, and windows of older tokens are deleted after it. Milvus needs a vector in every collection:
  a constant 2-d `marker`.
- The collection's properties record the model name and the sampling (`s3d.model`, `s3d.sampling`), so a
  writer with other settings is refused as for an index folder.
Many writers (the Indexed Job's pods) write at once with no lock and no merge: a video's commit is its own
row, and when two writers embed the same video the last commit wins and deletes the other's windows.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from s3d_retrieval.client.decode.video import Sampling
from s3d_retrieval.client.errors import Error
from s3d_retrieval.client.library.index import Entry

DIMENSION = 512
PATH_BYTES = 4096  # longest path stored
PAGE = 4096  # rows fetched per page of a query
VIDEO_FIELDS = ["path", "sha256", "size", "mtime", "model_version", "duration", "rows", "token"]


COLLECTION = "s3d_library"  # the collection a store uses unless told otherwise


@dataclass(frozen=True)
class Milvus:
    """Where an index lives in Milvus (the API's `index=Milvus(uri, collection)`, the CLI's `--milvus URI
    --collection NAME`): a Milvus Lite file ending in `.db`, or a server's `http://host:19530`."""

    uri: str
    collection: str = COLLECTION


class MilvusError(Error):
    """The Milvus store cannot be used (unreachable, a bad URI, another model's collection); one line."""


def _client(uri: str, timeout: float):
    """Note: importing pymilvus runs `logging.config.dictConfig`, which closes the logging handlers that exist
    then; the client imports it before any of its own (tests import it before TensorFlow's, see conftest)."""
    try:
        from pymilvus import MilvusClient
    except ImportError as err:
        raise MilvusError(f"--milvus needs pymilvus ({err}): pip install 's3d-retrieval[milvus]'") from None
    logging.getLogger("pymilvus").setLevel(logging.ERROR)  # its iterator warns on every page from Milvus Lite
    if not (uri.endswith(".db") or uri.startswith(("http://", "https://", "tcp://"))):
        raise MilvusError(f"--milvus {uri!r}: give a Milvus Lite file ending in .db or a server's "
                          f"http://HOST:19530")
    try:
        return MilvusClient(uri=uri, timeout=timeout)
    except Exception as err:  # pymilvus raises MilvusException, and others from its transport
        raise MilvusError(f"cannot open Milvus at {uri} ({_why(err)}); check the URI and that the server "
                          f"runs") from None


def _why(err: Exception) -> str:
    return str(getattr(err, "message", None) or err).splitlines()[0][:300]


@dataclass(frozen=True)
class Current:
    """A video as its commit row says: its entry and the token of its visible windows."""

    entry: Entry
    token: str


class MilvusStore:
    """Use as a context manager, like `Index`: `with MilvusStore(uri, name, model, sampling, create=True)`."""

    def __init__(self, uri: str, name: str, model: str, sampling: Sampling | None = None, create: bool = False,
                 timeout: float = 60.0, new_sampling: Callable[[], Sampling] | None = None):
        """`sampling`: the settings a writer embeds with (refused if the collection has others); a collection
        made here takes it, else `new_sampling()` (the served model's), else the released model's."""
        self.uri, self.windows_name, self.videos_name = uri, name, f"{name}_videos"
        self.client = _client(uri, timeout)
        try:
            exists = self.client.has_collection(name)
            if not exists and not create:
                raise MilvusError(f"no collection {name!r} at {uri}; run index with --milvus {uri} "
                                  f"--collection {name} first")
            if not exists:
                self._create(model, sampling or (new_sampling() if new_sampling else Sampling()))
            properties = self.client.describe_collection(name).get("properties", {})
        except MilvusError:
            self.client.close()
            raise
        except Exception as err:
            self.client.close()
            raise MilvusError(f"Milvus at {uri}: {_why(err)}") from None
        built_model = properties.get("s3d.model")
        if built_model != model:
            self.client.close()
            raise MilvusError(f"collection {name!r} at {uri} holds model {built_model!r}, not {model!r}: use "
                              f"another --collection")
        self.sampling = Sampling(**json.loads(properties["s3d.sampling"]))
        if sampling is not None and sampling != self.sampling:
            self.client.close()
            raise MilvusError(f"collection {name!r} at {uri} was built with {self.sampling}, not {sampling}: "
                              f"index with its settings or use another --collection")

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()

    def _create(self, model: str, sampling: Sampling) -> None:
        from pymilvus import DataType

        windows = self.client.create_schema(auto_id=True)
        windows.add_field("id", DataType.INT64, is_primary=True)
        windows.add_field("path", DataType.VARCHAR, max_length=PATH_BYTES)
        windows.add_field("token", DataType.VARCHAR, max_length=64)
        for name in ("start", "end", "duration"):  # seconds as the folder index keeps them: float64
            windows.add_field(name, DataType.DOUBLE)
        windows.add_field("vector", DataType.FLOAT_VECTOR, dim=DIMENSION)
        index = self.client.prepare_index_params()  # exact in a Lite file; a server chooses its own (approximate)
        index.add_index(field_name="vector", index_type="FLAT" if self.uri.endswith(".db") else "AUTOINDEX",
                        metric_type="IP")
        videos = self.client.create_schema(auto_id=False)
        videos.add_field("path", DataType.VARCHAR, is_primary=True, max_length=PATH_BYTES)
        for name in ("sha256", "token"):
            videos.add_field(name, DataType.VARCHAR, max_length=64)
        for name in ("size", "model_version", "rows"):
            videos.add_field(name, DataType.INT64)
        for name in ("mtime", "duration"):
            videos.add_field(name, DataType.DOUBLE)
        videos.add_field("marker", DataType.FLOAT_VECTOR, dim=2)
        marker = self.client.prepare_index_params()
        marker.add_index(field_name="marker", index_type="FLAT", metric_type="L2")
        self._make(self.videos_name, schema=videos, index_params=marker)
        # the windows' collection last: its existence says the pair is complete
        self._make(self.windows_name, schema=windows, index_params=index, properties={
            "s3d.model": model, "s3d.sampling": json.dumps(asdict(sampling))})

    def _make(self, name: str, **how) -> None:
        """Create a collection, unless another writer starting at the same time just did."""
        try:
            self.client.create_collection(name, **how)
        except Exception:
            if not self.client.has_collection(name):
                raise

    # --- what the writer (`index_videos`) asks of a store -----------------------------------------------

    def _rows(self, name: str, filter: str, fields: list[str]) -> Iterator[dict]:
        pages = self.client.query_iterator(name, batch_size=PAGE, filter=filter, output_fields=fields)
        try:
            while page := pages.next():
                yield from page
        finally:
            pages.close()

    def current(self, paths: Sequence[str] | None = None) -> dict[str, Current]:
        """The committed videos (all, or those of `paths`) by path."""
        found = {}
        for chunk in ([None] if paths is None else [paths[i: i + PAGE] for i in range(0, len(paths), PAGE)]):
            filter = 'path != ""' if chunk is None else f"path in {json.dumps(list(chunk))}"
            for row in self._rows(self.videos_name, filter, VIDEO_FIELDS):
                entry = Entry(row["path"], row["sha256"], int(row["size"]), float(row["mtime"]),
                              int(row["model_version"]), float(row["duration"]), "milvus", 0, int(row["rows"]))
                found[row["path"]] = Current(entry, row["token"])
        return found

    def entries(self) -> dict[str, Entry]:
        return {path: now.entry for path, now in self.current().items()}

    def touch(self, path: str, mtime: float) -> None:
        """A file whose bytes are unchanged but whose mtime moved: record the new mtime."""
        now = self.current([path]).get(path)
        if now is not None:
            self._commit_rows([(replace(now.entry, mtime=mtime), now.token)])

    def by_hash(self, sha256: str, version: int) -> Entry | None:
        """Windows are not shared between paths in Milvus: identical content under another path is embedded
        again (a folder index reuses them)."""
        return None

    def commit(self, entries: list[Entry], embeddings: list[np.ndarray], spans: list[np.ndarray],
               reused: Iterable[Entry] = ()) -> list[Entry]:
        """Store each video's windows under a new token, then its row (the commit), then delete its older
        windows. Returns the reused entries that could not be kept: none, nothing is reused here."""
        tokens = [uuid.uuid4().hex for _ in entries]
        for entry, token, vectors, times in zip(entries, tokens, embeddings, spans):
            self.client.insert(self.windows_name, [
                {"path": entry.path, "token": token, "start": float(s), "end": float(e),
                 "duration": entry.duration, "vector": v.tolist()} for v, (s, e) in zip(vectors, times)])
        self._commit_rows([(replace(entry, shard="milvus", row_count=len(vectors)), token)
                           for entry, token, vectors in zip(entries, tokens, embeddings)])
        for entry, token in zip(entries, tokens):
            self.client.delete(self.windows_name, filter=f"path == {json.dumps(entry.path)} and "
                                                         f"token != {json.dumps(token)}")
        return []

    def _commit_rows(self, rows: list[tuple[Entry, str]]) -> None:
        if rows:
            self.client.upsert(self.videos_name, [
                {"path": e.path, "sha256": e.sha256, "size": e.size, "mtime": e.mtime, "model_version": e.model_version,
                 "duration": e.duration, "rows": e.row_count, "token": token, "marker": [0.0, 0.0]}
                for e, token in rows])

    def refresh_search(self) -> None:
        """Milvus keeps its own index up to date: nothing to build."""

    def remove(self, paths: Iterable[str]) -> int:
        """Remove videos, or everything under folders: their rows first (invisible at once), then windows."""
        gone = 0
        for target in (os.path.abspath(p) for p in paths):
            folder = target.rstrip("/") + "/"  # LIKE's own wildcards (% and _) may match more: checked below
            filter = f"path == {json.dumps(target)} or path like {json.dumps(folder + '%')}"
            paths_gone = [row["path"] for row in self._rows(self.videos_name, filter, ["path"])
                          if row["path"] == target or row["path"].startswith(folder)]
            if paths_gone:
                self.client.delete(self.videos_name, ids=paths_gone)
                for i in range(0, len(paths_gone), PAGE):
                    self.client.delete(self.windows_name, filter=f"path in {json.dumps(paths_gone[i: i + PAGE])}")
            gone += len(paths_gone)
        return gone

