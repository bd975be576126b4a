"""The `index` verb: add video files (or folders of them) to an index, embedding only what changed.

Reader -> mapper -> writer:
- `plan` walks the paths (`walk`) and sorts each file into unchanged (size and mtime match its entry, or its
  content hash does), reused (same content already indexed under another path: no requests), to embed, or
  skipped with the reason (unreadable, not a video, vanished). A new file is probed as a video before it is
  hashed, so a huge non-video file named like one costs no full read.
- `embed_stream` streams each video's windows to the server with bounded memory and keeps its embeddings.
- every `flush_every` embedded videos are committed together; a video is committed whole or not at all, and
  one whose size or mtime changed since it was read is skipped (run again to index its new content): asked by
  the store under its lock, so an older content never replaces a newer one another writer committed meanwhile.
  A video the server embedded with non-finite values (NaN, infinity) is skipped and named.
- every `REFRESH_EVERY` windows committed, the store's search structure is updated by them (unless another
  writer is at work, which does it itself), so that readers score few videos the slow way during a long run:
  built afresh only when it must be (the first, or exact becoming approximate at 250k windows), training the
  lists again waits for the run's end. A `--shard` run, merged rather than searched, does not.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from s3d_retrieval.client.decode.video import Capture, VideoError
from s3d_retrieval.client.defaults import REFRESH_EVERY
from s3d_retrieval.client.library.index import file_sha256
from s3d_retrieval.client.library.store import Entry, Store
from s3d_retrieval.client.library.stream import embed_stream
from s3d_retrieval.client.library.walk import Shard, walk
from s3d_retrieval.client.transport.session import Pinned




@dataclass
class Stats:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    reused: int = 0  # same content already indexed under another path
    windows: int = 0
    requests: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why it was skipped)

    def summary(self) -> str:
        return (f"added {self.added}, replaced {self.replaced}, unchanged {self.unchanged}, reused {self.reused}, "
                f"skipped {len(self.failed)}; {self.windows} windows embedded in {self.requests} requests")


@dataclass(frozen=True)
class Todo:
    path: str
    sha256: str
    stat: os.stat_result
    replacing: bool


def _why(err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return "vanished before it could be read"
    return f"cannot be read ({err.strerror})"


def probe(path: str) -> None:
    """Raise OSError if the file cannot be read, VideoError if it does not open as a video."""
    with open(path, "rb") as f:
        f.read(1)
    Capture(path).close()


def plan(index: Store, paths: Iterable[str | Path], version: int, stats: Stats,
         shard: Shard | None = None) -> tuple[list[Todo], list[Entry]]:
    """The files to embed and the entries to reuse (of `shard`'s share only, if given); counts unchanged files
    and names skipped ones in `stats`."""
    found = walk(paths)
    stats.failed += found.skipped
    known, todo, reused = index.entries(), [], []
    for path in found.files:
        if shard and not shard.owns(found.keys[path]):
            continue
        try:
            st = os.stat(path)
            old = known.get(path)
            if old and old.model_version == version and (old.size, old.mtime) == (st.st_size, st.st_mtime):
                stats.unchanged += 1
                continue
            probe(path)
            sha = file_sha256(path)
        except OSError as err:
            stats.failed.append((path, _why(err)))
            continue
        except VideoError as err:
            stats.failed.append((path, str(err).removeprefix(f"{path}: ")))
            continue
        if old and old.model_version == version and old.sha256 == sha:
            index.touch(path, sha, st.st_mtime)
            stats.unchanged += 1
        elif same := index.by_hash(sha, version):
            reused.append(Entry(path, sha, st.st_size, st.st_mtime, version, same.duration, same.shard,
                                same.first_row, same.row_count))
            stats.reused += 1
        else:
            todo.append(Todo(path, sha, st, old is not None))
    return todo, reused


def changed_since(entry: Entry) -> str | None:
    """Why the file is no longer the one that was read (its size and mtime as `entry` records them), or None."""
    try:
        now = os.stat(entry.path)
    except OSError:
        return "vanished while it was being indexed"
    if (now.st_size, now.st_mtime) != (entry.size, entry.mtime):
        return "changed while it was being indexed; run index again to add its new content"
    return None


def index_videos(session: Pinned, index: Store, paths: Iterable[str | Path], flush_every: int = 16,
                 progress: bool | None = None, log: Callable[[str], None] | None = None,
                 shard: Shard | None = None, on_video: Callable[[int, int], None] | None = None) -> Stats:
    """Add `paths` to `index`, embedded by `session`'s model version, which must be the index's. Raises
    IndexWriteError (nothing of the failed group committed) on a write fault, ServerError when the server stays
    away longer than the session's `wait` or stops serving the version."""
    if index.model_version not in (None, session.version):
        raise ValueError(f"{index.where} holds model version {index.model_version}, not {session.version}")
    version = session.ensure_ready()
    requests_before = session.requests
    stats = Stats()
    todo, reused = plan(index, paths, version, stats, shard)
    for entry, why in index.commit([], [], [], reused, changed_since):
        stats.reused -= 1
        stats.failed.append((entry.path, why))
    pending: list[tuple[Entry, np.ndarray, np.ndarray, bool]] = []  # (entry, embeddings, spans, replacing)
    since_refresh = 0

    def flush() -> None:
        nonlocal since_refresh
        if not pending:
            return
        left = dict(index.commit([e for e, _, _, _ in pending], [x for _, x, _, _ in pending],
                                 [s for _, _, s, _ in pending], still=changed_since))
        for entry, embeddings, _, replacing in pending:
            if entry in left:
                stats.failed.append((entry.path, left[entry]))
                continue
            stats.windows += len(embeddings)
            stats.replaced += replacing
            stats.added += not replacing
            since_refresh += len(embeddings)
        if since_refresh >= REFRESH_EVERY and shard is None:  # a shard index is merged, not searched
            index.refresh_search(wait=False, full=False)
            since_refresh = 0
        if log and len(left) < len(pending):
            log(f"committed {len(pending) - len(left)} video(s): "
                f"{', '.join(e.path for e, _, _, _ in pending if e not in left)}")
        pending.clear()

    bar = tqdm(total=len(todo), unit="video", desc="indexing", file=sys.stderr,
               disable=not (sys.stderr.isatty() if progress is None else progress))
    for count, (item, done) in enumerate(embed_stream(session, todo, lambda t: t.path, index.sampling), start=1):
        bar.update()
        if on_video:  # videos done, of how many this run embeds
            on_video(count, len(todo))
        if isinstance(done, VideoError):
            stats.failed.append((item.path, str(done).removeprefix(f"{item.path}: ")))
            continue
        entry = Entry(item.path, item.sha256, item.stat.st_size, item.stat.st_mtime, done.version,
                      float(done.spans[-1][1]), "", 0, 0)
        pending.append((entry, done.embeddings, done.spans, item.replacing))
        if len(pending) >= flush_every:
            flush()
    flush()
    bar.close()
    stats.requests = session.requests - requests_before
    return stats
