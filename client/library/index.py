"""A persistent, incremental, resumable index of video embeddings.

Layout of an index folder:
- `index.sqlite`: table `meta` (format, model name, the model version that embeds every video, sampling settings
  as JSON) and table `videos`
  (path, sha256, size, mtime, model version, duration, shard, first row, row count, indexed at);
- `shards/<id>.embeddings.npy` [rows, 512] float32 and `shards/<id>.spans.npy` [rows, 2] (start, end seconds):
  immutable; a video's windows are rows `first .. first + count` of its shard;
- `meta.generation`: a counter moved by every change of the entries; `search/`: the search structure
  (`vectors`), which records the generation it holds; `writer.lock`: the writers' lock (`lock`).

Durability: a shard is written under a temporary name and renamed, then one SQLite transaction records the
videos that use it. A run killed at any point leaves either the old or the new state of each video, never half;
shard files no transaction refers to are swept by a writer that finds no other writer at work. Removing or
replacing a video drops its rows from `videos`; its shard rows stay until no video refers to the shard.

Sharing: every change (commit, removal, adoption, search-structure build, sweep) happens under the index's
writer lock (`lock`), and every file a writer creates is committed or deleted before it lets go, so whatever
unused file is found while nobody holds the lock has no live owner: a writer sweeps only then (`lock.free`), and
never waits for a live writer to do it. A change of the entries moves the generation counter in the same
transaction; a write that changes nothing moves nothing and takes no lock. Readers (`read_only`) open the database
read-only (`readonly`: a transaction a killed writer left half done is read as rolled back), read the generation
and the entries in one transaction (`snapshot`) and write no file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import numpy as np

from s3d_retrieval.client.decode.video import Sampling
from s3d_retrieval.client.defaults import LOCK_WAIT, TIMEOUT
from s3d_retrieval.client.files import atomic_write
from s3d_retrieval.client.library import vectors
from s3d_retrieval.client.library.lock import WriterLock
from s3d_retrieval.client.library.rank import Windows
from s3d_retrieval.client.library.readonly import ReadOnlyDB
from s3d_retrieval.client.library.store import Entry, Location, Still, StoreError, View
from s3d_retrieval.client.library.view import IndexView, open_view

FORMAT = "s3d-index/1"
DB = "index.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL,
    model_version INTEGER NOT NULL, duration REAL NOT NULL, shard TEXT NOT NULL, first_row INTEGER NOT NULL,
    row_count INTEGER NOT NULL, indexed_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS videos_sha256 ON videos (sha256);
"""
ENTRY = "path, sha256, size, mtime, model_version, duration, shard, first_row, row_count"  # an Entry's columns


class IndexFolderError(StoreError):
    """The index folder cannot be used as asked; the message says what to do."""


class IndexWriteError(StoreError):
    """Writing to the index failed (disk full, I/O error); the index is as it was before that commit."""


@dataclass(frozen=True)
class Record:
    """An entry and when it was indexed (ISO 8601 UTC, so it sorts by time): what `merge` compares."""

    entry: Entry
    indexed_at: str


def _holds(built: dict | None, generation: str, kind: str | None) -> bool:
    """A structure of this version's format, at `generation`, of the `kind` asked (None: any)."""
    return built is not None and "segments" in built and built["generation"] == generation and \
        kind in (None, built["kind"])


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


T = TypeVar("T")


@dataclass(frozen=True)
class Folder:
    """An index folder as a `Location` (`index=PATH` in the API, `--index DIR` in the CLI)."""

    path: Path

    def open(self, model: str, *, sampling: Sampling | None = None, create: bool = False, read_only: bool = False,
             lock_wait: float = LOCK_WAIT, log: Callable[[str], None] | None = None, timeout: float = TIMEOUT,
             new_sampling: Callable[[], Sampling] | None = None, model_version: int | None = None,
             new_version: Callable[[], int] | None = None) -> Index:
        """The index this folder is, or a name points at now (`promote`)."""
        if create and sampling is None and new_sampling is not None and not (self.path / DB).is_file():
            sampling = new_sampling()
        return Index(self.path, model, sampling, create=create, read_only=read_only, lock_wait=lock_wait, log=log,
                     model_version=model_version, new_version=new_version)

    def __str__(self) -> str:
        return str(self.path)

    def name(self, lock_wait: float = LOCK_WAIT):
        """This path as a name `promote` points at an index (`client.library.promote.FolderName`)."""
        from s3d_retrieval.client.library.promote import FolderName  # promote builds on this module

        return FolderName(self.path, lock_wait)


def location(where: str | os.PathLike[str] | Location) -> Location:
    """Where an index lives: a folder path as a `Folder`, any other `Location` (a Milvus collection) as it is."""
    return Folder(Path(os.path.abspath(where))) if isinstance(where, (str, os.PathLike)) else where


class Index:
    def __init__(self, folder: str | Path, model: str, sampling: Sampling | None = None, create: bool = False,
                 read_only: bool = False, lock_wait: float = LOCK_WAIT, log: Callable[[str], None] | None = None,
                 model_version: int | None = None, new_version: Callable[[], int] | None = None):
        """Open (or, with `create`, make) the index; `sampling` must match the one it was built with.
        `read_only`: for readers (search, the UI, merge's sources): the database is opened read-only and no file
        is ever written. A writer waits up to `lock_wait` seconds for another writer's change (`log` says once
        who holds the index). The index holds one model version (`model_version`, None for an empty index of an
        earlier release): `model_version` asked of an index that has another is refused; a new one takes it,
        else `new_version()`."""
        self.name = Path(folder)  # as given: a name `promote` made is followed to the index it points at now
        self.folder = Path(os.path.realpath(folder))
        self.target: Folder = Folder(self.folder)
        self.where = str(self.name) if os.path.abspath(self.name) == str(self.folder) else \
            f"{self.name} (-> {self.folder})"
        if not (self.folder / DB).is_file() and not create:
            raise IndexFolderError(f"{self.folder}: no index here; build one with `index PATH... --index {self.folder}`")
        self._lock = None if read_only else WriterLock(self.folder, lock_wait, log)
        self._reader: ReadOnlyDB | None = None
        try:
            self._open(model, sampling, read_only)
            self.model_version = self._version(model_version, new_version, read_only)
        except BaseException:
            self.close()
            raise
        self.swept = [] if read_only else self._sweep()  # what dead writers left, deleted on opening

    @property
    def lock(self) -> WriterLock:
        """The writers' lock; an index opened read-only has none, and never writes."""
        if self._lock is None:
            raise PermissionError(f"{self.where} is opened read-only: only a writer changes it")
        return self._lock

    def _open(self, model: str, sampling: Sampling | None, read_only: bool) -> None:
        """Connect, and check the index is of this format, model and sampling."""
        if read_only:
            try:
                self._reader = ReadOnlyDB(self.folder / DB)
            except (sqlite3.Error, OSError) as err:
                raise self._unreadable(err) from None
            meta = self._read(lambda db: dict(db.execute("SELECT key, value FROM meta")))
        else:
            meta = self._open_writer(model, sampling)
        if meta["format"] != FORMAT:
            raise IndexFolderError(f"{self.folder}: index format {meta['format']}, this client reads {FORMAT}")
        if meta["model"] != model:
            raise IndexFolderError(f"{self.folder} was built with model '{meta['model']}', not '{model}'; "
                                   f"pass --model {meta['model']} or use another --index folder")
        self.sampling = Sampling(**json.loads(meta["sampling"]))
        if sampling is not None and sampling != self.sampling:
            raise IndexFolderError(f"{self.folder} was built with {self.sampling}; index with the same settings or "
                                   f"use another --index folder")

    def _version(self, asked: int | None, new_version: Callable[[], int] | None, read_only: bool) -> int | None:
        """The model version the index holds: recorded in `meta`; an index of an earlier release records the one
        its videos share (a writer writes it down); a new index takes `asked`, else `new_version()`."""
        def recorded() -> str | None:
            return self._read(lambda db: (db.execute("SELECT value FROM meta WHERE key = 'model_version'").fetchone()
                                          or [None])[0])

        version = recorded()
        if version is None:
            used = sorted(self._read(lambda db: {r[0] for r in db.execute("SELECT DISTINCT model_version FROM videos")}))
            if len(used) > 1:
                raise IndexFolderError(f"{self.folder} holds embeddings of model versions {used}, made before an "
                                       f"index kept one version: rebuild it (`s3d-client index PATH... --index NEW`, "
                                       f"then `s3d-client promote NAME NEW`)")
            chosen = used[0] if used else asked if asked is not None else new_version() if new_version else None
            if chosen is not None and asked is not None and chosen != asked:
                raise IndexFolderError(f"{self.folder} holds model version {chosen}, not {asked}: an index keeps "
                                       f"the version that embedded it; index into a new one (--model-version "
                                       f"{asked}) and promote it")
            if chosen is not None and not read_only:
                with self.lock.held(), self.db:  # two writers at once record the same one, or the first's
                    self.db.execute("INSERT OR IGNORE INTO meta VALUES ('model_version', ?)", (str(chosen),))
                version = recorded()
            else:
                version = None if chosen is None else str(chosen)
        if version is not None and asked is not None and int(version) != asked:
            raise IndexFolderError(f"{self.folder} holds model version {version}, not {asked}: an index keeps the "
                                   f"version that embedded it; index into a new one (--model-version {asked}) and "
                                   f"promote it")
        return None if version is None else int(version)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on the database as last committed; a failure is one line."""
        try:
            return self._reader.read(fn) if self._reader else fn(self.db)
        except (sqlite3.Error, OSError) as err:
            raise self._unreadable(err) from None

    def _unreadable(self, err: sqlite3.Error | OSError) -> IndexFolderError:
        why = err.strerror if isinstance(err, OSError) and err.strerror else err
        return IndexFolderError(f"{self.folder}: cannot read the index ({why}); check the folder and run again")

    def _open_writer(self, model: str, sampling: Sampling | None) -> dict[str, str]:
        """Connect for writing; a new index gets its tables and settings under the lock (two writers may
        create the same one at once)."""
        fresh = not (self.folder / DB).is_file()
        if fresh:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.folder / DB, timeout=60)
        meta = dict(self.db.execute("SELECT key, value FROM meta")) if not fresh and self._has_meta() else {}
        if meta:
            return meta
        if sampling is None:
            raise IndexFolderError(f"{self.folder}: empty index and no sampling given")
        with self.lock.held():
            (self.folder / "shards").mkdir(exist_ok=True)
            self.db.executescript(SCHEMA)
            if not dict(self.db.execute("SELECT key, value FROM meta")):
                with self.db:
                    self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                        ("format", FORMAT), ("model", model), ("sampling", json.dumps(asdict(sampling))),
                        ("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))])
            return dict(self.db.execute("SELECT key, value FROM meta"))

    def _has_meta(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is not None

    def close(self) -> None:
        if self._reader:
            self._reader.close()
        elif hasattr(self, "db"):
            self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unused(self) -> list[Path]:
        """Files no committed video or built structure uses: left by a killed writer, fully replaced, or a live
        writer's work in progress. Only a holder of the lock may delete them, and only one that found the lock
        free may tell they have no live owner (`_sweep`)."""
        used = {row[0] for row in self.db.execute("SELECT DISTINCT shard FROM videos")}
        found = list(self.folder.glob(f".{vectors.FOLDER}.*"))  # search structure builds that were killed
        found += vectors.garbage(self.folder)  # and updates
        shards = self.folder / "shards"
        for file in shards.iterdir() if shards.is_dir() else ():
            orphan = not file.name.startswith(".") and file.name.split(".")[0] not in used
            if orphan or file.name.endswith(".tmp"):
                found.append(file)
        return found

    def _sweep(self) -> list[Path]:
        """Delete what dead writers left, if no writer is at work now (a live writer's files look the same, and
        are committed or deleted before it lets go): never waits for one. Returns what it deleted."""
        if not self._unused():
            return []
        with self.lock.free() as alone:
            if not alone:
                return []
            gone = self._unused()
            for path in gone:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        return gone

    def vacuum(self, older_than: float | None = None) -> str:
        """What a killed writer left (shard files, unfinished search structures), deleted now if no writer is
        at work; a live writer's files are never touched, whatever their age (`older_than` means nothing here)."""
        gone = self.swept + self._sweep()
        if not gone and self._unused():
            return f"{self.folder}: another writer is at work; run vacuum again when it is done"
        return f"{self.folder}: removed {len(gone)} file(s) no video uses"

    def entries(self) -> dict[str, Entry]:
        return self._read(lambda db: {row[0]: Entry(*row) for row in db.execute(
            f"SELECT {ENTRY} FROM videos ORDER BY path")})

    def snapshot(self) -> tuple[str, dict[str, Entry]]:
        """The generation and the entries it counts, read in one transaction: no commit falls between them."""
        def both(db: sqlite3.Connection) -> tuple[str, dict[str, Entry]]:
            within = db.in_transaction
            if not within:
                db.execute("BEGIN")
            try:
                generation = _generation(db)
                return generation, {row[0]: Entry(*row) for row in db.execute(
                    f"SELECT {ENTRY} FROM videos ORDER BY path")}
            finally:
                if not within:
                    db.execute("COMMIT")
        return self._read(both)

    def entry(self, path: str) -> Entry | None:
        """One video's entry as committed now."""
        row = self._read(lambda db: db.execute(f"SELECT {ENTRY} FROM videos WHERE path = ?", (path,)).fetchone())
        return Entry(*row) if row else None

    def records(self) -> dict[str, Record]:
        rows = self._read(lambda db: db.execute(f"SELECT {ENTRY}, indexed_at FROM videos").fetchall())
        return {row[0]: Record(Entry(*row[:-1]), row[-1]) for row in rows}

    def adopt(self, records: list[Record]) -> None:
        """Record entries whose shard files are already in place (a merge, holding the lock since it brought
        them), keeping when they were indexed; one transaction, none for no records."""
        if not records:
            return
        try:
            with self.lock.held(), self.db:
                self.db.executemany("INSERT OR REPLACE INTO videos VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    [(*asdict(r.entry).values(), r.indexed_at) for r in records])
                self._bump()
        except sqlite3.Error as err:
            raise self._write_error(err, len(records)) from None

    def by_hash(self, sha256: str, model_version: int) -> Entry | None:
        row = self.db.execute(f"SELECT {ENTRY} FROM videos WHERE sha256 = ? AND model_version = ? LIMIT 1",
                              (sha256, model_version)).fetchone()
        return Entry(*row) if row else None

    def commit(self, entries: list[Entry], embeddings: list[np.ndarray], spans: list[np.ndarray],
               reused: Sequence[Entry] = (), still: Still | None = None) -> list[tuple[Entry, str]]:
        """Record new videos (their windows written as one shard) and `reused` ones (rows already stored),
        all or nothing: on a write error the shard is deleted, the transaction rolled back, IndexWriteError.
        Under the lock, each video is first asked `still` (its file may have changed since it was read: a newer
        commit must not be replaced by an older one). Returns the videos left out, with why."""
        if not reused and not entries:
            return []
        shard = uuid.uuid4().hex
        files = [self.folder / "shards" / f"{shard}.{part}.npy" for part in ("embeddings", "spans")]
        with self.lock.held():
            left = [(e, "its content's stored windows were removed meanwhile; run index again") for e in reused
                    if not (self.folder / "shards" / f"{e.shard}.embeddings.npy").is_file()]
            if still:
                named = {e.path for e, _ in left}
                left += [(e, why) for e in [*entries, *reused] if e.path not in named and (why := still(e))]
            out = {e.path for e, _ in left}
            kept = [i for i, e in enumerate(entries) if e.path not in out]
            try:
                self._write(shard, files, [entries[i] for i in kept], [embeddings[i] for i in kept],
                            [spans[i] for i in kept], [e for e in reused if e.path not in out])
            except (OSError, sqlite3.Error) as err:
                for file in files:
                    file.unlink(missing_ok=True)
                raise self._write_error(err, len(reused) + len(entries)) from None
        return left

    def _write(self, shard: str, files: list[Path], entries: list[Entry], embeddings: list[np.ndarray],
               spans: list[np.ndarray], rows: list[Entry]) -> None:
        """The shard files, then the transaction that makes them count (the caller holds the lock)."""
        if not entries and not rows:
            return
        versions = {e.model_version for e in [*entries, *rows]}
        if self.model_version is None and len(versions) == 1:  # the first commit of a new index records it
            with self.db:
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('model_version', ?)", (str(min(versions)),))
            self.model_version = self._version(None, None, False)
        if versions - {self.model_version}:  # one version an index
            raise IndexWriteError(f"{self.folder} holds model version {self.model_version}; embeddings of model "
                                  f"version(s) {sorted(versions)} are not added to it")
        if entries:
            matrix = np.concatenate(embeddings).astype(np.float32)
            atomic_write(files[0], lambda f: np.save(f, matrix))
            times = np.concatenate(spans).astype(np.float64)
            atomic_write(files[1], lambda f: np.save(f, times))
            first = np.cumsum([0] + [len(e) for e in embeddings])
            rows += [Entry(**{**asdict(e), "shard": shard, "first_row": int(first[i]),
                              "row_count": len(embeddings[i])}) for i, e in enumerate(entries)]
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO videos VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [(*asdict(e).values(), now) for e in rows])
            self._bump()

    def _write_error(self, err: Exception, videos: int) -> IndexWriteError:
        return IndexWriteError(f"cannot write to the index at {self.folder} ({err}); it keeps what was committed "
                               f"before, {videos} video(s) were not added: fix the cause (free disk space?) and "
                               f"run the same command again")

    def touch(self, path: str, sha256: str, mtime: float) -> None:
        """Record a new modification time for unchanged bytes (a backup or `rsync -t` touched the file), if the
        entry still holds those bytes: the entries' vectors are the same, so the generation does not move."""
        try:
            with self.lock.held(), self.db:
                self.db.execute("UPDATE videos SET mtime = ? WHERE path = ? AND sha256 = ?", (mtime, path, sha256))
        except sqlite3.Error as err:
            raise self._write_error(err, 0) from None

    def remove(self, paths: Iterable[str | Path]) -> int:
        """Forget these files, and every indexed file under these folders; returns how many."""
        targets = [os.path.abspath(p) for p in paths]  # as `index` records them (links not resolved)
        gone = [p for p in self.entries() if any(p == t or p.startswith(t.rstrip("/") + "/") for t in targets)]
        if not gone:
            return 0
        with self.lock.held():
            with self.db:
                removed = sum(self.db.execute("DELETE FROM videos WHERE path = ?", (p,)).rowcount for p in gone)
                if removed:
                    self._bump()
            self._sweep()
        return removed

    def _bump(self) -> None:
        """Count a change of the entries (inside the transaction that makes it): the search structure records
        the generation it was built from, so knowing whether it is stale costs one row, not a pass over all."""
        self.db.execute("INSERT INTO meta VALUES ('generation', '1') "
                        "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    def generation(self) -> str:
        return self._read(_generation)

    def _shard(self, shard: str) -> tuple[np.ndarray, np.ndarray]:
        base = self.folder / "shards" / shard
        return np.load(f"{base}.embeddings.npy", mmap_mode="r"), np.load(f"{base}.spans.npy", mmap_mode="r")

    def refresh_search(self, kind: str | None = None, *, wait: bool = True, full: bool = True) -> dict | None:
        """Bring the search structure (`vectors`) up to the entries, for writers: left alone when it holds the
        current generation (and is of the `kind` asked), else, under the lock, updated by what changed (or built
        afresh when it must be) from entries read in the same transaction as the generation it records. Returns
        its manifest, which decides before any faiss index is loaded. `wait=False`: nothing done (None) while
        another writer is at work, which brings it up to date itself. `full=False` (in the middle of a run): built
        afresh only when it must be (none yet, or another kind), else updated, even past the growth or dead share
        that call for training again: that waits for the run's end."""
        built = vectors.read_manifest(self.folder)
        if _holds(built, self.generation(), kind):
            return built
        with self.lock.held() if wait else self.lock.free() as alone:
            if alone is False:
                return None
            generation, current = self.snapshot()
            built = vectors.read_manifest(self.folder)  # another writer may have built it meanwhile
            if _holds(built, generation, kind):
                return built
            self._build(generation, list(current.values()), kind, full)
        return vectors.read_manifest(self.folder)

    def _build(self, generation: str, entries: list[Entry], kind: str | None, full: bool = True) -> None:
        """Update the structure by what changed since it was built, or build it afresh when it must be
        (`vectors.needs_build`); the caller holds the lock. Videos are read in the order their shards store them,
        so each shard file is opened once."""
        built = vectors.read_manifest(self.folder)
        entries = sorted(entries, key=lambda e: (e.shard, e.first_row))
        try:
            kept, removed, dying = self._changes(built, entries) if built and "segments" in built else (set(), {}, 0)
            rows = sum(e.row_count for e in entries)
            if built is None or vectors.needs_build(self.folder, built, kind, rows, dying) and \
                    (full or vectors.must_build(built, kind, rows)):
                vectors.build(self.folder, self._segment_parts(entries), generation, kind)
            else:
                added = [e for e in entries if e.path not in kept]
                vectors.update(self.folder, built, generation, self._segment_parts(added), removed)
        except OSError as err:
            raise self._write_error(err, 0) from None

    def _changes(self, built: dict, entries: list[Entry]) -> tuple[set[str], dict[str, list[int]], int]:
        """Against the built structure: the paths it still holds as they are now, the videos it holds that
        were removed or replaced (segment name -> their numbers), and how many rows those have."""
        base = self.folder / vectors.FOLDER
        segments = [vectors.Segment(base / s["name"], s["dead"]) for s in built["segments"]]
        videos = [v for seg in segments for v in seg.videos]
        held = vectors.still_held(videos, [k for seg in segments for k in seg.placements],
                                  np.concatenate([seg.dead for seg in segments]),
                                  {e.path: e.placement for e in entries})
        live = np.zeros(len(videos), bool)
        live[held] = True
        removed, dying, offset = {}, 0, 0
        for s, seg in zip(built["segments"], segments):
            gone = [v for v in range(len(seg.videos)) if not seg.dead[v] and not live[offset + v]]
            if gone:
                removed[s["name"]] = gone
                dying += int(np.diff(seg.first)[gone].sum())
            offset += len(seg.videos)
        return {videos[n][0] for n in held}, removed, dying

    def _segment_parts(self, entries: list[Entry]) -> vectors.Parts:
        """The windows of `entries` as a segment's parts, read shard by shard as the segment is written."""
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def rows(video: int) -> tuple[np.ndarray, np.ndarray]:
            entry = entries[video]
            if entry.shard not in cache:
                cache.clear()  # keep one shard's maps open at a time
                cache[entry.shard] = self._shard(entry.shard)
            emb, spans = cache[entry.shard]
            return emb[entry.first_row: entry.first_row + entry.row_count], \
                spans[entry.first_row: entry.first_row + entry.row_count]

        return vectors.Parts([(e.path, e.duration) for e in entries], rows, [e.row_count for e in entries],
                             [e.placement for e in entries])

    def windows(self, paths: Iterable[str] | None = None) -> Windows:
        """The indexed windows (of every video, or of `paths`), grouped by video, for ranking."""
        entries = self.entries()
        chosen = entries.values() if paths is None else [entries[p] for p in paths if p in entries]
        return Windows.join(self.parts(list(chosen)))

    def parts(self, entries: list[Entry]) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(path, embeddings, spans) of each entry: views of the memory-mapped shards, nothing read yet."""
        parts, cache = [], {}
        for entry in entries:
            if entry.shard not in cache:
                cache[entry.shard] = self._shard(entry.shard)
            emb, spans = cache[entry.shard]
            rows = slice(entry.first_row, entry.first_row + entry.row_count)
            parts.append((entry.path, emb[rows], spans[rows]))
        return parts

    def resolve(self) -> Folder:
        """The index folder the path this was opened by is now (a name `promote` moves is followed)."""
        return Folder(Path(os.path.realpath(self.name)))

    def view(self, before: View | None = None, kind: str | None = None, nprobe: int | None = None) -> IndexView:
        """What a reader searches now (`client.library.view`); `before`'s loaded segments are kept."""
        if self.model_version is None:  # an empty index of an earlier release: a writer may have recorded one since
            self.model_version = self._version(None, None, True)
        loaded = before.structure if isinstance(before, IndexView) else None
        return open_view(self, kind, nprobe, loaded)

    def outdated(self, view: View) -> bool:
        """A writer committed since `view` was read, or (while its structure was behind) rebuilt the structure."""
        if self.generation() != view.generation:
            return True
        built = vectors.read_manifest(self.folder) if view.stale else None
        return built is not None and built["generation"] == view.generation


def _generation(db: sqlite3.Connection) -> str:
    row = db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    return row[0] if row else "0"
