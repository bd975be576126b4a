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
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import numpy as np

from s3d_retrieval.client.decode.video import Sampling
from s3d_retrieval.client.errors import Error
from s3d_retrieval.client.library.index import Entry
from s3d_retrieval.client.library.rank import Windows

DIMENSION = 512
PATH_BYTES = 4096  # longest path stored
PAGE = 4096  # rows fetched per page of a query
TOP_K = 16384  # the most rows Milvus returns for one query or search
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
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # its own tracebacks and warnings: ours say it in a line
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


def literal(text: str) -> str:
    """A string as a Milvus expression literal (quotes and backslashes escaped; other characters as they are)."""
    return json.dumps(text, ensure_ascii=False)


OPEN_LITE: Counter[str] = Counter()  # stores of this process open on each URI (a Lite file's server is shared)
STRONG = {"consistency_level": "Strong"}  # reads see every write acknowledged before them


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
        self.wrote = False  # by this store: what refresh_search seals
        self.key = os.path.abspath(uri) if uri.endswith(".db") else uri  # as Milvus Lite names its servers
        OPEN_LITE[self.key] += 1
        try:
            exists = self.client.has_collection(name)
            if not exists and not create:
                raise MilvusError(f"no collection {name!r} at {uri}; run index with --milvus {uri} "
                                  f"--collection {name} first")
            if not exists:
                self._create(model, sampling or (new_sampling() if new_sampling else Sampling()))
            properties = self.client.describe_collection(name).get("properties", {})
            for collection in (self.videos_name, self.windows_name):  # a Lite file opened anew starts released
                self.client.load_collection(collection)
        except MilvusError:
            self.close()
            raise
        except Exception as err:
            self.close()
            raise MilvusError(f"Milvus at {uri}: {_why(err)}") from None
        built_model = properties.get("s3d.model")
        if built_model != model:
            self.close()
            raise MilvusError(f"collection {name!r} at {uri} holds model {built_model!r}, not {model!r}: use "
                              f"another --collection")
        self.sampling = Sampling(**json.loads(properties["s3d.sampling"]))
        if sampling is not None and sampling != self.sampling:
            self.close()
            raise MilvusError(f"collection {name!r} at {uri} was built with {self.sampling}, not {sampling}: "
                              f"index with its settings or use another --collection")

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; for a Lite file that no other store of this process still uses, stop the server
        pymilvus started for it too, so the file is free for the next process (Lite keeps it locked)."""
        if self.client is None:
            return
        client, self.client = self.client, None
        OPEN_LITE[self.key] -= 1
        try:
            client.close()
        except Exception:  # closing a connection that broke: nothing left to keep
            pass
        if self.uri.endswith(".db") and not OPEN_LITE[self.key]:
            try:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self.key)
            except Exception:  # no Lite here
                pass

    @contextmanager
    def _asking(self, what: str) -> Iterator[None]:
        """Any failure of Milvus while doing `what` as one MilvusError line."""
        try:
            yield
        except MilvusError:
            raise
        except Exception as err:
            raise MilvusError(f"Milvus at {self.uri} failed to {what} ({_why(err)}); what was committed before "
                              f"stays, run the same command again") from None

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

    def _rows(self, name: str, filter: str, fields: list[str]) -> list[dict]:
        with self._asking("read"):
            pages = self.client.query_iterator(name, batch_size=PAGE, filter=filter, output_fields=fields, **STRONG)
            rows = []
            try:
                while page := pages.next():
                    rows += page
            finally:
                pages.close()
        return rows

    def current(self, paths: Sequence[str] | None = None) -> dict[str, Current]:
        """The committed videos (all, or those of `paths`) by path."""
        found = {}
        for chunk in ([None] if paths is None else [paths[i: i + PAGE] for i in range(0, len(paths), PAGE)]):
            if chunk is None:
                rows = self._rows(self.videos_name, 'path != ""', VIDEO_FIELDS)
            else:  # at most one row a path: one query
                with self._asking("read videos"):
                    rows = self.client.query(self.videos_name, filter="path in [" + ", ".join(map(literal, chunk)) + "]",
                                             output_fields=VIDEO_FIELDS, limit=len(chunk), **STRONG)
            for row in rows:
                entry = Entry(row["path"], row["sha256"], int(row["size"]), float(row["mtime"]),
                              int(row["model_version"]), float(row["duration"]), "milvus", 0, int(row["rows"]))
                found[row["path"]] = Current(entry, row["token"])
        return found

    def count(self, name: str) -> int:
        """Rows in one of the pair's collections."""
        with self._asking("count rows"):
            [row] = self.client.query(name, filter="", output_fields=["count(*)"], **STRONG)
        return int(row["count(*)"])

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
        """Store each video's windows under a new token, then its row (the commit), then delete the windows of
        the token that row replaced, and only those: a token is never current again, so no writer's commit loses
        its windows. (Two writers of one video at once, or a crash between commit and delete, leave windows no
        row names: invisible, removed with the video.) Returns the reused entries not kept: none here."""
        if not entries:
            return []
        tokens = [uuid.uuid4().hex for _ in entries]
        self.wrote = True
        with self._asking("store windows"):
            for entry, token, vectors, times in zip(entries, tokens, embeddings, spans):
                self.client.insert(self.windows_name, [
                    {"path": entry.path, "token": token, "start": float(s), "end": float(e),
                     "duration": entry.duration, "vector": v.tolist()} for v, (s, e) in zip(vectors, times)])
        replaced = self.current([e.path for e in entries])
        self._commit_rows([(replace(entry, shard="milvus", row_count=len(vectors)), token)
                           for entry, token, vectors in zip(entries, tokens, embeddings)])
        stale = [now.token for now in replaced.values()]
        with self._asking("delete replaced windows"):
            for i in range(0, len(stale), PAGE):
                chunk = stale[i: i + PAGE]
                self.client.delete(self.windows_name, filter="token in [" + ", ".join(map(literal, chunk)) + "]")
        return []

    def _commit_rows(self, rows: list[tuple[Entry, str]]) -> None:
        if rows:
            with self._asking("commit"):
                self.client.upsert(self.videos_name, [
                    {"path": e.path, "sha256": e.sha256, "size": e.size, "mtime": e.mtime,
                     "model_version": e.model_version, "duration": e.duration, "rows": e.row_count, "token": token,
                     "marker": [0.0, 0.0]} for e, token in rows])

    def windows(self, paths: Iterable[str], current: dict[str, Current] | None = None) -> Windows:
        """The committed windows of `paths` (those stored), grouped by video in time order (what search reads for
        its top videos' moments, and `eval`): one read for them all. `current`: their rows, if read already."""
        paths = list(paths)
        current = self.current(paths) if current is None else {p: current[p] for p in paths if p in current}
        owner = {now.token: path for path, now in current.items()}
        by_token: dict[str, list[dict]] = {token: [] for token in owner}
        tokens, fields = list(owner), ["token", "vector", "start", "end"]
        for i in range(0, len(tokens), PAGE):
            chunk = "token in [" + ", ".join(map(literal, tokens[i: i + PAGE])) + "]"
            expected = sum(current[owner[t]].entry.row_count for t in tokens[i: i + PAGE])
            rows = []
            if expected < TOP_K:  # one query (an iterator's pages cost ~20 ms each in Milvus Lite)
                with self._asking("read windows"):
                    rows = self.client.query(self.windows_name, filter=chunk, output_fields=fields,
                                             limit=expected + 1, **STRONG)
            if len(rows) > expected or expected >= TOP_K:  # more than the rows say (a retried insert): read all
                rows = self._rows(self.windows_name, chunk, fields)
            for row in rows:
                by_token[row["token"]].append(row)
        parts = []
        for token, rows in by_token.items():
            rows.sort(key=lambda r: (r["start"], r["end"]))
            if rows:  # a row whose windows are not readable yet is not shown
                parts.append((owner[token], np.array([r["vector"] for r in rows], np.float32),
                              np.array([(r["start"], r["end"]) for r in rows], np.float64)))
        return Windows.join(parts)

    def refresh_search(self) -> None:
        """At the end of a writer's run that wrote something into a Lite file: seal it (Lite scans growing data
        row by row; sealed segments are searched through their index, many times faster). A server seals
        segments on its own and rate-limits flushes: nothing is asked of it."""
        if not (self.wrote and self.uri.endswith(".db")):
            return
        try:
            for name in (self.videos_name, self.windows_name):
                self.client.flush(name)
        except Exception:  # what was committed stays searchable, only slower: not a failed run
            pass

    def remove(self, paths: Iterable[str]) -> int:
        """Remove videos, or everything under folders: their rows first (invisible at once), then windows."""
        gone = 0
        for target in (os.path.abspath(p) for p in paths):
            folder = target.rstrip("/") + "/"  # LIKE's own wildcards (% and _) may match more: checked below
            filter = f"path == {literal(target)} or path like {literal(folder + '%')}"
            paths_gone = sorted({row["path"] for row in self._rows(self.videos_name, filter, ["path"])
                                 if row["path"] == target or row["path"].startswith(folder)})
            self.wrote |= bool(paths_gone)
            with self._asking("remove videos"):
                for i in range(0, len(paths_gone), PAGE):  # rows first: gone from search at once
                    self.client.delete(self.videos_name, ids=paths_gone[i: i + PAGE])
                # then every window of those paths, of any token (replaced or unwritten ones too)
                for i in range(0, len(paths_gone), PAGE):
                    chunk = ", ".join(map(literal, paths_gone[i: i + PAGE]))
                    self.client.delete(self.windows_name, filter=f"path in [{chunk}]")
            gone += len(paths_gone)
        return gone

