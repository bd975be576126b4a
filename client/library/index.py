"""A persistent, incremental, resumable index of video embeddings.

Layout of an index folder:
- `index.sqlite`: table `meta` (format, model name, sampling settings as JSON) and table `videos`
  (path, sha256, size, mtime, model version, duration, shard, first row, row count, indexed at);
- `shards/<id>.embeddings.npy` [rows, 512] float32 and `shards/<id>.spans.npy` [rows, 2] (start, end seconds):
  immutable; a video's windows are rows `first .. first + count` of its shard.

Durability: a shard is written under a temporary name and renamed, then one SQLite transaction records the
videos that use it. A run killed at any point leaves either the old or the new state of each video, never half;
shard files no transaction refers to are swept when the index is next opened. Removing or replacing a video
drops its rows from `videos`; its shard rows stay until no video refers to the shard.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from client.files import atomic_write
from client.library import vectors
from client.library.vectors import VectorSearch
from client.library.rank import Windows
from client.decode.video import Sampling

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


class IndexFolderError(Exception):
    """The index folder cannot be used as asked; the message says what to do."""


class IndexWriteError(Exception):
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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Index:
    def __init__(self, folder: str | Path, model: str, sampling: Sampling | None = None, create: bool = False,
                 read_only: bool = False):
        """Open (or, with `create`, make) the index; `sampling` must match the one it was built with.
        `read_only`: for readers (search, the UI, merge's sources) beside a running writer: the database is
        opened read-only and nothing is swept (a writer's shard between its rename and its commit looks
        unused)."""
        self.folder = Path(folder)
        if not (self.folder / DB).is_file() and not create:
            raise IndexFolderError(f"{self.folder}: no index here; build one with `index PATH... --index {self.folder}`")
        if read_only:
            self.db = sqlite3.connect(f"{(self.folder / DB).absolute().as_uri()}?mode=ro", uri=True)
        else:
            (self.folder / "shards").mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.folder / DB)
            self.db.executescript(SCHEMA)
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if not meta:
            if sampling is None:
                raise IndexFolderError(f"{self.folder}: empty index and no sampling given")
            with self.db:
                self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("format", FORMAT), ("model", model), ("sampling", json.dumps(asdict(sampling))),
                    ("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))])
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if meta["format"] != FORMAT:
            raise IndexFolderError(f"{self.folder}: index format {meta['format']}, this client reads {FORMAT}")
        if meta["model"] != model:
            raise IndexFolderError(f"{self.folder} was built with model '{meta['model']}', not '{model}'; "
                              f"pass --model {meta['model']} or use another --index folder")
        self.sampling = Sampling(**json.loads(meta["sampling"]))
        if sampling is not None and sampling != self.sampling:
            raise IndexFolderError(f"{self.folder} was built with {self.sampling}; index with the same settings or "
                              f"use another --index folder")
        if not read_only:
            self._sweep()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _sweep(self) -> None:
        """Delete shard files that no committed video uses (left by a killed run, or fully replaced)."""
        used = {row[0] for row in self.db.execute("SELECT DISTINCT shard FROM videos")}
        for stale in self.folder.glob(f".{vectors.FOLDER}.*"):  # a search structure build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        for file in (self.folder / "shards").iterdir():
            orphan = not file.name.startswith(".") and file.name.split(".")[0] not in used
            if orphan or file.name.endswith(".tmp"):
                file.unlink()

    def entries(self) -> dict[str, Entry]:
        rows = self.db.execute("SELECT path, sha256, size, mtime, model_version, duration, shard, first_row, "
                               "row_count FROM videos ORDER BY path")
        return {row[0]: Entry(*row) for row in rows}

    def records(self) -> dict[str, Record]:
        rows = self.db.execute("SELECT path, sha256, size, mtime, model_version, duration, shard, first_row, "
                               "row_count, indexed_at FROM videos")
        return {row[0]: Record(Entry(*row[:-1]), row[-1]) for row in rows}

    def adopt(self, records: list[Record]) -> None:
        """Record entries whose shard files are already in place (a merge), keeping when they were indexed;
        one transaction."""
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO videos VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    [(*asdict(r.entry).values(), r.indexed_at) for r in records])
                self._bump()
        except sqlite3.Error as err:
            raise self._write_error(err, len(records)) from None

    def by_hash(self, sha256: str, model_version: int) -> Entry | None:
        row = self.db.execute("SELECT path, sha256, size, mtime, model_version, duration, shard, first_row, row_count "
                              "FROM videos WHERE sha256 = ? AND model_version = ? LIMIT 1",
                              (sha256, model_version)).fetchone()
        return Entry(*row) if row else None

    def commit(self, entries: list[Entry], embeddings: list[np.ndarray], spans: list[np.ndarray],
               reused: list[Entry] = ()) -> None:
        """Record new videos (their windows written as one shard) and `reused` ones (rows already stored),
        all or nothing: on a write error the shard is deleted, the transaction rolled back, IndexWriteError."""
        rows: list[Entry] = list(reused)
        shard = uuid.uuid4().hex
        files = [self.folder / "shards" / f"{shard}.{part}.npy" for part in ("embeddings", "spans")]
        try:
            if entries:
                vectors = np.concatenate(embeddings).astype(np.float32)
                atomic_write(files[0], lambda f: np.save(f, vectors))
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
        except (OSError, sqlite3.Error) as err:
            for file in files:
                file.unlink(missing_ok=True)
            raise self._write_error(err, len(rows)) from None

    def _write_error(self, err: Exception, videos: int) -> IndexWriteError:
        return IndexWriteError(f"cannot write to the index at {self.folder} ({err}); it keeps what was committed "
                               f"before, {videos} video(s) were not added: fix the cause (free disk space?) and "
                               f"run the same command again")

    def touch(self, path: str, mtime: float) -> None:
        try:
            with self.db:
                self.db.execute("UPDATE videos SET mtime = ? WHERE path = ?", (mtime, path))
        except sqlite3.Error as err:
            raise self._write_error(err, 0) from None

    def remove(self, paths: list[str | Path]) -> int:
        """Forget these files, and every indexed file under these folders; returns how many."""
        targets = [os.path.abspath(p) for p in paths]  # as `index` records them (links not resolved)
        gone = [p for p in self.entries() if any(p == t or p.startswith(t.rstrip("/") + "/") for t in targets)]
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

    def refresh_search(self, kind: str | None = None, nprobe: int | None = None) -> VectorSearch:
        """The search structure of the current entries (`vectors`), rebuilt if missing, stale or of another
        kind than asked; written atomically. Its manifest decides, before any faiss index is loaded."""
        built = vectors.read_manifest(self.folder)
        if built and built["generation"] == self.generation() and kind in (None, built["kind"]):
            return vectors.VectorSearch(self.folder, nprobe)
        entries = list(self.entries().values())
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def rows(video: int) -> tuple[np.ndarray, np.ndarray]:
            entry = entries[video]
            if entry.shard not in cache:
                cache.clear()  # entries come in path order; keep one shard's maps open at a time
                cache[entry.shard] = self._shard(entry.shard)
            emb, spans = cache[entry.shard]
            return emb[entry.first_row: entry.first_row + entry.row_count], \
                spans[entry.first_row: entry.first_row + entry.row_count]

        parts = vectors.Parts([(e.path, e.duration) for e in entries], rows, [e.row_count for e in entries])
        try:
            vectors.build(self.folder, parts, self.generation(), kind)
        except OSError as err:
            raise self._write_error(err, 0) from None
        return vectors.VectorSearch(self.folder, nprobe)

    def windows(self) -> Windows:
        """Every indexed window, grouped by video, for ranking."""
        parts, cache = [], {}
        for entry in self.entries().values():
            if entry.shard not in cache:
                cache[entry.shard] = self._shard(entry.shard)
            emb, spans = cache[entry.shard]
            rows = slice(entry.first_row, entry.first_row + entry.row_count)
            parts.append((entry.path, emb[rows], spans[rows]))
        return Windows.join(parts)

    def model_versions(self) -> set[int]:
        return {row[0] for row in self.db.execute("SELECT DISTINCT model_version FROM videos")}
