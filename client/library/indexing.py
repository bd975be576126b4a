"""The `index` verb: add video files (or folders of them) to an index, embedding only what changed.

A file whose size and mtime match its entry is skipped; otherwise its content hash decides: same content
(also found under another path) reuses the stored windows, so re-indexing unchanged files costs no requests.
Decoding runs in threads ahead of the requests; every `flush_every` embedded videos are committed together.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from client.library.index import Entry, Index, file_sha256
from client.library.search import prefetch
from client.transport.session import Session
from client.decode.video import VideoError, load

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".gif", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv"}


@dataclass
class Stats:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    reused: int = 0  # same content already indexed under another path
    windows: int = 0
    requests: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"added {self.added}, replaced {self.replaced}, unchanged {self.unchanged}, reused {self.reused}, "
                f"failed {len(self.failed)}; {self.windows} windows embedded in {self.requests} requests")


def expand(paths: Iterable[str | Path]) -> list[str]:
    """Absolute file paths: files as given, folders searched recursively for video files."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(str(p.resolve()) for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        else:
            found.append(str(path.resolve()))
    return list(dict.fromkeys(found))


def index_videos(session: Session, index: Index, paths: Iterable[str | Path], flush_every: int = 16,
                 progress: bool | None = None, log=None) -> Stats:
    version = session.ensure_ready()
    requests_before = session.requests
    stats, known = Stats(), index.entries()
    todo: list[tuple[str, str, os.stat_result, bool]] = []
    reused: list[Entry] = []
    for path in expand(paths):
        try:
            st = os.stat(path)
        except OSError as err:
            stats.failed.append((path, err.strerror or "cannot be read"))
            continue
        old = known.get(path)
        if old and old.model_version == version and (old.size, old.mtime) == (st.st_size, st.st_mtime):
            stats.unchanged += 1
            continue
        sha = file_sha256(path)
        if old and old.model_version == version and old.sha256 == sha:
            index.touch(path, st.st_mtime)
            stats.unchanged += 1
        elif same := index.by_hash(sha, version):
            reused.append(Entry(path, sha, st.st_size, st.st_mtime, version, same.duration, same.shard,
                                same.first_row, same.row_count))
            stats.reused += 1
        else:
            todo.append((path, sha, st, old is not None))
    if reused:
        index.commit([], [], [], reused)
    pending: list[tuple[Entry, np.ndarray, np.ndarray]] = []

    def flush() -> None:
        if pending:
            index.commit([e for e, _, _ in pending], [x for _, x, _ in pending], [s for _, _, s in pending])
            if log:
                log(f"committed {len(pending)} video(s): {', '.join(e.path for e, _, _ in pending)}")
            pending.clear()

    bar = tqdm(total=len(todo), unit="video", desc="indexing", file=sys.stderr,
               disable=not (sys.stderr.isatty() if progress is None else progress))
    for (path, sha, st, replacing), future in prefetch(lambda t: load(t[0], index.sampling), todo):
        try:
            frames, spans = future.result()
        except VideoError as err:
            stats.failed.append((path, str(err).removeprefix(f"{path}: ")))
            bar.update()
            continue
        embeddings = session.embed_windows(frames)
        entry = Entry(path, sha, st.st_size, st.st_mtime, version, float(spans[-1][1]), "", 0, 0)
        pending.append((entry, embeddings, np.asarray(spans)))
        stats.windows += len(frames)
        stats.replaced += replacing
        stats.added += not replacing
        bar.update()
        if len(pending) >= flush_every:
            flush()
    flush()
    bar.close()
    stats.requests = session.requests - requests_before
    return stats
