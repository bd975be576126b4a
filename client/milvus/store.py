"""A Milvus collection pair holding an index: what `Index` is for a folder, for the writer and the reader.

- `NAME` (windows): one row per window: `path`, `token` (the video's version: a new one each time it is
  embedded, beginning with when it was made), `start`/`end` seconds, `duration`, `vector` (the 512-d embedding,
  inner product). Rows are written first and are invisible until their video's row names their token.
- `NAME_videos` (one row per video, primary key `path`): size, mtime, sha256, model version, duration, rows and
  the current `token`. Writing it is the commit: a video becomes visible to search only once all its windows
  are stored, and windows of older tokens are deleted after it. Milvus needs a vector in every collection:
  a constant 2-d `marker`.
- The collection's properties record the model name, the model version that embeds every video and the sampling
  (`s3d.model`, `s3d.model_version`, `s3d.sampling`), so a writer with other settings is refused as for a folder.
- A name may be an alias (`promote`) of a windows collection: the store opens what it names now, and `resolve`
  says what it names later.
Many writers (the Indexed Job's pods) write at once with no lock and no merge: a video's commit is its own
row, and when two writers embed the same video the last commit wins and deletes the other's windows. Windows no
row names (a writer killed between its windows and its row, a failed insert, two writers of one video) are
invisible; `vacuum` deletes those older than any writer in flight.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import numpy as np

from s3d_retrieval.client.decode.video import Sampling
from s3d_retrieval.client.defaults import LOCK_WAIT, TIMEOUT, VACUUM_AGE
from s3d_retrieval.client.library.rank import Windows
from s3d_retrieval.client.library.store import Entry, Still, View
from s3d_retrieval.client.milvus.connection import (PAGE, STRONG, TOP_K, MilvusError, connect, literal, one_of, release,
                                                    starts_with, why)
from s3d_retrieval.client.milvus.names import MilvusName
from s3d_retrieval.client.milvus.view import MilvusView

DIMENSION = 512
PATH_BYTES = 4096  # longest path stored
VIDEO_FIELDS = ["path", "sha256", "size", "mtime", "model_version", "duration", "rows", "token"]


COLLECTION = "s3d_library"  # the collection a store uses unless told otherwise


@dataclass(frozen=True)
class Milvus:
    """Where an index lives in Milvus (the API's `index=Milvus(uri, collection)`, the CLI's `--milvus URI
    --collection NAME`): a Milvus Lite file ending in `.db`, or a server's `http://host:19530`. A `Location`."""

    uri: str
    collection: str = COLLECTION

    def open(self, model: str, *, sampling: Sampling | None = None, create: bool = False, read_only: bool = False,
             lock_wait: float = LOCK_WAIT, log: Callable[[str], None] | None = None, timeout: float = TIMEOUT,
             new_sampling: Callable[[], Sampling] | None = None, model_version: int | None = None,
             new_version: Callable[[], int] | None = None) -> MilvusStore:
        return MilvusStore(self.uri, self.collection, model, sampling, create, timeout, new_sampling, model_version,
                           new_version, read_only)

    def __str__(self) -> str:
        return f"{self.uri} (collection {self.collection})"

    def name(self, lock_wait: float = LOCK_WAIT) -> MilvusName:
        """This collection name as an alias `promote` points at a collection (Milvus has no lock to wait for)."""
        return MilvusName(self.uri, self.collection)


def new_token() -> str:
    """A video version's token: when it was made (hex nanoseconds), then random; `vacuum` reads its age."""
    return f"{time.time_ns():x}-{uuid.uuid4().hex[:16]}"


def made_at(token: str) -> float | None:
    """Seconds since the epoch a token was made (None: a token of an earlier release, which says nothing)."""
    stamp, dash, _ = token.partition("-")
    try:
        return int(stamp, 16) / 1e9 if dash else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Current:
    """A video as its commit row says: its entry and the token of its visible windows."""

    entry: Entry
    token: str


class MilvusStore:
    """Use as a context manager, like `Index`: `with MilvusStore(uri, name, model, sampling, create=True)`."""

    def __init__(self, uri: str, name: str, model: str, sampling: Sampling | None = None, create: bool = False,
                 timeout: float = TIMEOUT, new_sampling: Callable[[], Sampling] | None = None,
                 model_version: int | None = None, new_version: Callable[[], int] | None = None,
                 read_only: bool = False):
        """`name`: a windows collection, or an alias of one (`promote`). `sampling`: the settings a writer embeds
        with (refused if the collection has others); a collection made here takes it, else `new_sampling()` (the
        served model's), else the released model's; and `model_version`, else `new_version()`. An existing one
        asked for another `model_version` is refused."""
        self.uri, self.name = uri, name
        self.client = connect(uri, timeout)
        self.wrote = False  # by this store: what refresh_search seals
        try:
            collection = self._aliased(name) or name
            self.windows_name, self.videos_name = collection, f"{collection}_videos"
            self.target = Milvus(uri, collection)
            self.where = f"{uri} (collection {name}" + (f" -> {collection})" if collection != name else ")")
            exists = self.client.has_collection(collection)
            if not exists and not create:
                raise MilvusError(f"no collection {name!r} at {uri}; run index with --milvus {uri} "
                                  f"--collection {name} first")
            if not exists:
                self._create(model, sampling or (new_sampling() if new_sampling else Sampling()),
                             model_version if model_version is not None else new_version() if new_version else None)
            properties = self.client.describe_collection(collection).get("properties", {})
            for collection in (self.videos_name, self.windows_name):  # a Lite file opened anew starts released
                self.client.load_collection(collection)
        except MilvusError:
            self.close()
            raise
        except Exception as err:
            self.close()
            raise MilvusError(f"Milvus at {uri}: {why(err)}") from None
        try:
            self._check(properties, model, sampling, model_version, read_only)
        except BaseException:
            self.close()
            raise

    def _check(self, properties: dict, model: str, sampling: Sampling | None, asked: int | None,
               read_only: bool) -> None:
        """The collection's model, sampling and model version, against what was asked."""
        built_model = properties.get("s3d.model")
        if built_model != model:
            raise MilvusError(f"collection {self.name!r} at {self.uri} holds model {built_model!r}, not {model!r}: "
                              f"use another --collection")
        self.sampling = Sampling(**json.loads(properties["s3d.sampling"]))
        if sampling is not None and sampling != self.sampling:
            raise MilvusError(f"collection {self.name!r} at {self.uri} was built with {self.sampling}, not "
                              f"{sampling}: index with its settings or use another --collection")
        recorded = properties.get("s3d.model_version")
        if recorded is None:  # a collection of an earlier release: the version its videos share
            used = sorted({e.model_version for e in self.entries().values()})
            if len(used) > 1:
                raise MilvusError(f"{self.where} holds embeddings of model versions {used}, made before a "
                                  f"collection kept one version: rebuild it into a new collection and promote it")
            version = used[0] if used else asked
            if version is not None and asked is not None and version != asked:
                raise MilvusError(f"{self.where} holds model version {version}, not {asked}: a collection keeps "
                                  f"the version that embedded it; index into a new one and promote it")
            if version is not None and not read_only:
                with self._asking("record the model version"):
                    self.client.alter_collection_properties(self.windows_name, {"s3d.model_version": str(version)})
            recorded = None if version is None else str(version)
        self.model_version = None if recorded is None else int(recorded)
        if self.model_version is not None and asked is not None and self.model_version != asked:
            raise MilvusError(f"{self.where} holds model version {self.model_version}, not {asked}: a collection "
                              f"keeps the version that embedded it; index into a new one and promote it")

    def _aliased(self, name: str) -> str | None:
        """The collection the alias `name` names, or None when it is no alias (MilvusError if Milvus cannot say)."""
        try:
            return self.client.describe_alias(name)["collection_name"]
        except Exception as err:  # pymilvus says "alias ... does not exist" as an exception
            if "does not exist" in str(err):
                return None
            raise MilvusError(f"Milvus at {self.uri} cannot say what {name!r} names ({why(err)})") from None

    def resolve(self) -> Milvus:
        """The collection the name this store was opened by names now (where it was, if Milvus cannot say)."""
        try:
            return Milvus(self.uri, self._aliased(self.name) or self.name)
        except MilvusError:  # a moment's outage is no promote
            return self.target

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            release(client, self.uri)

    @contextmanager
    def _asking(self, what: str) -> Iterator[None]:
        """Any failure of Milvus while doing `what` as one MilvusError line."""
        try:
            yield
        except MilvusError:
            raise
        except Exception as err:
            raise MilvusError(f"Milvus at {self.uri} failed to {what} ({why(err)}); what was committed before "
                              f"stays, run the same command again") from None

    def _create(self, model: str, sampling: Sampling, version: int | None) -> None:
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
            "s3d.model": model, "s3d.sampling": json.dumps(asdict(sampling)),
            **({"s3d.model_version": str(version)} if version is not None else {})})

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
                    rows = self.client.query(self.videos_name, filter=one_of("path", list(chunk)),
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

    def entry(self, path: str) -> Entry | None:
        now = self.current([path]).get(path)
        return now.entry if now else None

    def view(self, before: View | None = None, kind: str | None = None, nprobe: int | None = None) -> MilvusView:
        if self.model_version is None:  # an empty collection of an earlier release: a writer may have recorded one
            with self._asking("read the collection"):
                recorded = self.client.describe_collection(self.windows_name).get("properties", {})
            self.model_version = int(recorded["s3d.model_version"]) if "s3d.model_version" in recorded else None
        return MilvusView(self)

    def outdated(self, view: View) -> bool:
        return False  # a view asks Milvus at each search

    def touch(self, path: str, sha256: str, mtime: float) -> None:
        """A file whose bytes are unchanged but whose mtime moved: record the new mtime, on the row as it is now
        and only if it still holds those bytes. Milvus has no conditional write: a commit of the same video by
        another writer between this read and the upsert (milliseconds) would be undone; `index` then embeds it
        again at its next run, as for a changed file."""
        now = self.current([path]).get(path)
        if now is not None and now.entry.sha256 == sha256:
            self._commit_rows([(replace(now.entry, mtime=mtime), now.token)])

    def by_hash(self, sha256: str, version: int) -> Entry | None:
        """Windows are not shared between paths in Milvus: identical content under another path is embedded
        again (a folder index reuses them)."""
        return None

    def commit(self, entries: list[Entry], embeddings: list[np.ndarray], spans: list[np.ndarray],
               reused: Sequence[Entry] = (), still: Still | None = None) -> list[tuple[Entry, str]]:
        """Store each video's windows under a new token, then its row (the commit), then delete the windows of
        the token that row replaced, and only those: a token is never current again, so no writer's commit loses
        its windows. (Two writers of one video at once, or a crash between commit and delete, leave windows no
        row names: invisible, removed with the video or by `vacuum`.) `still` is asked just before the rows are
        written (there is no lock to ask it under). Returns the videos left out, with why."""
        if not entries:
            return []
        versions = {e.model_version for e in entries}
        if self.model_version is None and len(versions) == 1:  # the first commit of an empty earlier collection
            with self._asking("record the model version"):
                self.client.alter_collection_properties(self.windows_name, {"s3d.model_version": str(min(versions))})
            self.model_version = min(versions)
        if versions - {self.model_version}:
            raise MilvusError(f"{self.where} holds model version {self.model_version}; embeddings of model "
                              f"version(s) {sorted(versions)} are not added to it")
        tokens = [new_token() for _ in entries]
        self.wrote = True
        with self._asking("store windows"):
            for entry, token, vectors, times in zip(entries, tokens, embeddings, spans):
                self.client.insert(self.windows_name, [
                    {"path": entry.path, "token": token, "start": float(s), "end": float(e),
                     "duration": entry.duration, "vector": v.tolist()} for v, (s, e) in zip(vectors, times)])
        left = [(e, why_not) for e in entries if still and (why_not := still(e))]
        out = {e.path for e, _ in left}
        kept = [(e, t, v) for e, t, v in zip(entries, tokens, embeddings) if e.path not in out]
        replaced = self.current([e.path for e, _, _ in kept])
        self._commit_rows([(replace(entry, shard="milvus", row_count=len(vectors)), token)
                           for entry, token, vectors in kept])
        stale = [now.token for now in replaced.values()] + [t for e, t in zip(entries, tokens) if e.path in out]
        with self._asking("delete replaced windows"):
            for i in range(0, len(stale), PAGE):
                self.client.delete(self.windows_name, filter=one_of("token", stale[i: i + PAGE]))
        return left

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
            chunk = one_of("token", tokens[i: i + PAGE])
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

    def refresh_search(self, *, wait: bool = True, full: bool = True) -> None:
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
            folder = target.rstrip("/") + "/"
            filter = f"path == {literal(target)} or path like {starts_with(folder)}"
            paths_gone = sorted({row["path"] for row in self._rows(self.videos_name, filter, ["path"])
                                 if row["path"] == target or row["path"].startswith(folder)})  # exactly
            self.wrote |= bool(paths_gone)
            with self._asking("remove videos"):
                # rows first, gone from search at once; by an expression, not `ids=`, which pymilvus writes into
                # an expression unescaped (a backslash in a path breaks it)
                for i in range(0, len(paths_gone), PAGE):
                    self.client.delete(self.videos_name, filter=one_of("path", paths_gone[i: i + PAGE]))
                # then every window of those paths, of any token (replaced or unwritten ones too)
                for i in range(0, len(paths_gone), PAGE):
                    self.client.delete(self.windows_name, filter=one_of("path", paths_gone[i: i + PAGE]))
            gone += len(paths_gone)
        return gone

    def vacuum(self, older_than: float | None = None) -> str:
        """Delete the windows whose token no video's row names and that were made over `older_than` seconds
        ago (younger ones may be a writer's, about to be committed; tokens of an earlier release carry no time
        and count as old). Reads every window's token once: a maintenance verb, not for each run."""
        older_than = VACUUM_AGE if older_than is None else older_than
        named = {now.token for now in self.current().values()}
        orphans: dict[str, int] = {}
        for row in self._rows(self.windows_name, 'path != ""', ["token"]):
            if row["token"] not in named:
                orphans[row["token"]] = orphans.get(row["token"], 0) + 1
        limit = time.time() - older_than
        old = [t for t in orphans if (made_at(t) or 0.0) <= limit]
        named = {now.token for now in self.current().values()}  # a commit meanwhile may name an old token: never
        old = [t for t in old if t not in named]
        with self._asking("delete windows no video names"):
            for i in range(0, len(old), PAGE):
                self.client.delete(self.windows_name, filter=one_of("token", old[i: i + PAGE]))
        self.wrote |= bool(old)
        return (f"{self.where}: removed {sum(orphans[t] for t in old)} window(s) of {len(old)} video version(s) no "
                f"video names, made over {older_than:g} s ago; {len(orphans) - len(old)} younger one(s) left")

