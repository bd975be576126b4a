"""A persistent, incremental, resumable index of video embeddings.

Layout of an index folder:
- `index.sqlite`: table `meta` (format, model name, sampling settings as JSON) and table `videos`
  (path, sha256, size, mtime, model version, duration, shard, first row, row count, indexed at);
- `shards/<id>.embeddings.npy` [rows, 512] float32 and `shards/<id>.spans.npy` [rows, 2] (start, end seconds):
  immutable; a video's windows are rows `first .. first + count` of its shard;
- `meta.generation`: a counter moved by every change of the entries; `search/`: the search structure
  (`vectors`), which records the generation it holds; `writer.lock`: the writers' lock (`lock`).

Durability: a shard is written under a temporary name and renamed, then one SQLite transaction records the
videos that use it. A run killed at any point leaves either the old or the new state of each video, never half;
shard files no transaction refers to are swept when a writer next opens the index. Removing or replacing a video
drops its rows from `videos`; its shard rows stay until no video refers to the shard.

Sharing: every change (commit, removal, adoption, search-structure build, sweep) happens under the index's
writer lock (`lock`), and every file a writer creates is committed or deleted before it lets go, so whatever
unused file a lock holder finds has no live owner. A change of the entries moves the generation counter in the
same transaction; a write that changes nothing moves nothing and takes no lock. Readers (`read_only`) open the
database read-only, read the generation and the entries in one transaction (`snapshot`) and write no file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from s3d_retrieval.client.decode.video import Sampling
from s3d_retrieval.client.defaults import LOCK_WAIT
from s3d_retrieval.client.files import atomic_write
from s3d_retrieval.client.library import vectors
from s3d_retrieval.client.library.lock import WriterLock
from s3d_retrieval.client.library.rank import Windows
from s3d_retrieval.client.errors import Error

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


class IndexFolderError(Error):
    """The index folder cannot be used as asked; the message says what to do."""


class IndexWriteError(Error):
    """Writing to the index failed (disk full, I/O error); the index is as it was before that commit."""


@dataclass(frozen=True)
class Entry:
    path: str
    sha256: str
    size: int
    mtime: float
    model_version: int
    duration: float
    shard: str
    first_row: int
    row_count: int


@dataclass(frozen=True)
class Record:
    """An entry and when it was indexed (ISO 8601 UTC, so it sorts by time): what `merge` compares."""

    entry: Entry
    indexed_at: str


def _holds(built: dict | None, generation: str, kind: str | None) -> bool:
    """A structure of this version's format, at `generation`, of the `kind` asked (None: any)."""
    return bool(built) and "segments" in built and built["generation"] == generation and kind in (None, built["kind"])


def placement(entry: Entry) -> str:
    """Where an entry's windows are stored: equal placements hold the same vectors (shards are immutable)."""
    return f"{entry.shard}:{entry.first_row}:{entry.row_count}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Index:
    def __init__(self, folder: str | Path, model: str, sampling: Sampling | None = None, create: bool = False,
                 read_only: bool = False, lock_wait: float = LOCK_WAIT, log: Callable[[str], None] | None = None):
        """Open (or, with `create`, make) the index; `sampling` must match the one it was built with.
        `read_only`: for readers (search, the UI, merge's sources): the database is opened read-only and no file
        is ever written. A writer waits up to `lock_wait` seconds for another writer's change (`log` says once
        who holds the index)."""
        self.folder = Path(folder)
        if not (self.folder / DB).is_file() and not create:
            raise IndexFolderError(f"{self.folder}: no index here; build one with `index PATH... --index {self.folder}`")
        self.lock = None if read_only else WriterLock(self.folder, lock_wait, log)
        if read_only:
            self.db = sqlite3.connect(f"{(self.folder / DB).absolute().as_uri()}?mode=ro", uri=True)
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
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
        if not read_only and self._unused():
            with self.lock.held():
                self._sweep()

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
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unused(self) -> list[Path]:
        """Files no committed video or built structure uses: left by a killed writer, or fully replaced. Only
        a holder of the lock may delete them (before it, they may be another writer's work in progress)."""
        used = {row[0] for row in self.db.execute("SELECT DISTINCT shard FROM videos")}
        found = list(self.folder.glob(f".{vectors.FOLDER}.*"))  # search structure builds that were killed
        found += vectors.garbage(self.folder)  # and updates
        shards = self.folder / "shards"
        for file in shards.iterdir() if shards.is_dir() else ():
            orphan = not file.name.startswith(".") and file.name.split(".")[0] not in used
            if orphan or file.name.endswith(".tmp"):
                found.append(file)
        return found

    def _sweep(self) -> None:
        for path in self._unused():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def entries(self) -> dict[str, Entry]:
        rows = self.db.execute(f"SELECT {ENTRY} FROM videos ORDER BY path")
        return {row[0]: Entry(*row) for row in rows}

    def snapshot(self) -> tuple[str, dict[str, Entry]]:
        """The generation and the entries it counts, read in one transaction: no commit falls between them."""
        in_transaction = self.db.in_transaction
        if not in_transaction:
            self.db.execute("BEGIN")
        try:
            return self.generation(), self.entries()
        finally:
            if not in_transaction:
                self.db.execute("COMMIT")

    def entry(self, path: str) -> Entry | None:
        """One video's entry as committed now."""
        row = self.db.execute(f"SELECT {ENTRY} FROM videos WHERE path = ?", (path,)).fetchone()
        return Entry(*row) if row else None

    def records(self) -> dict[str, Record]:
        rows = self.db.execute(f"SELECT {ENTRY}, indexed_at FROM videos")
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
               reused: list[Entry] = ()) -> list[Entry]:
        """Record new videos (their windows written as one shard) and `reused` ones (rows already stored),
        all or nothing: on a write error the shard is deleted, the transaction rolled back, IndexWriteError.
        Returns the reused entries left out because another writer removed their rows meanwhile."""
        if not reused and not entries:
            return []
        shard = uuid.uuid4().hex
        files = [self.folder / "shards" / f"{shard}.{part}.npy" for part in ("embeddings", "spans")]
        with self.lock.held():
            kept = [e for e in reused if (self.folder / "shards" / f"{e.shard}.embeddings.npy").is_file()]
            try:
                self._write(shard, files, entries, embeddings, spans, kept)
            except (OSError, sqlite3.Error) as err:
                for file in files:
                    file.unlink(missing_ok=True)
                raise self._write_error(err, len(reused) + len(entries)) from None
        return [e for e in reused if e not in kept]

    def _write(self, shard: str, files: list[Path], entries: list[Entry], embeddings: list[np.ndarray],
               spans: list[np.ndarray], rows: list[Entry]) -> None:
        """The shard files, then the transaction that makes them count (the caller holds the lock)."""
        rows = list(rows)
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

    def touch(self, path: str, mtime: float) -> None:
        """Record a new modification time for unchanged bytes (a backup or `rsync -t` touched the file): the
        entries' vectors are the same, so the generation does not move."""
        try:
            with self.lock.held(), self.db:
                self.db.execute("UPDATE videos SET mtime = ? WHERE path = ?", (mtime, path))
        except sqlite3.Error as err:
            raise self._write_error(err, 0) from None

    def remove(self, paths: list[str | Path]) -> int:
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
        row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return row[0] if row else "0"

    def _shard(self, shard: str) -> tuple[np.ndarray, np.ndarray]:
        base = self.folder / "shards" / shard
        return np.load(f"{base}.embeddings.npy", mmap_mode="r"), np.load(f"{base}.spans.npy", mmap_mode="r")

    def refresh_search(self, kind: str | None = None) -> dict:
        """Bring the search structure (`vectors`) up to the entries, for writers: left alone when it holds the
        current generation (and is of the `kind` asked), else, under the lock, updated by what changed (or built
        afresh when it must be) from entries read in the same transaction as the generation it records. Returns
        its manifest, which decides before any faiss index is loaded."""
        built = vectors.read_manifest(self.folder)
        if _holds(built, self.generation(), kind):
            return built
        with self.lock.held():
            generation, current = self.snapshot()
            built = vectors.read_manifest(self.folder)  # another writer may have built it meanwhile
            if _holds(built, generation, kind):
                return built
            self._build(generation, list(current.values()), kind)
        return vectors.read_manifest(self.folder)

    def _build(self, generation: str, entries: list[Entry], kind: str | None) -> None:
        """Update the structure by what changed since it was built, or build it afresh when it must be
        (`vectors.needs_build`); the caller holds the lock."""
        built = vectors.read_manifest(self.folder)
        try:
            kept, removed, dying = self._changes(built, entries) if built and "segments" in built else (set(), {}, 0)
            if vectors.needs_build(self.folder, built, kind, sum(e.row_count for e in entries), dying):
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
                                  {e.path: placement(e) for e in entries})
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
                cache.clear()  # entries come in path order; keep one shard's maps open at a time
                cache[entry.shard] = self._shard(entry.shard)
            emb, spans = cache[entry.shard]
            return emb[entry.first_row: entry.first_row + entry.row_count], \
                spans[entry.first_row: entry.first_row + entry.row_count]

        return vectors.Parts([(e.path, e.duration) for e in entries], rows, [e.row_count for e in entries],
                             [placement(e) for e in entries])

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

    def model_versions(self) -> set[int]:
        return {row[0] for row in self.db.execute("SELECT DISTINCT model_version FROM videos")}
