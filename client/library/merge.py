"""The `merge` verb: shard indexes (from `index --shard I/N` on many machines) combined into one.

Shard files are immutable and named by uuid, so a merge links (or, across file systems, copies) each source's
shard files into the target and records the sources' entries there in one SQLite transaction: all of a merge
or nothing, and no embedding is rewritten. Indexes built with another sampling or model are refused. A path
present in several indexes keeps its newest entry (by when it was indexed); re-running the same merge finds
every entry already there and changes nothing: no lock taken, no file touched, no generation moved. The sources
are only read, and must hold one model version, the target's; the target's writer lock is held from the first
file brought in to the adoption.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from s3d_retrieval.client.defaults import LOCK_WAIT
from s3d_retrieval.client.library.index import Index, IndexFolderError, Record


@dataclass
class MergeStats:
    added: int = 0
    replaced: int = 0
    kept: int = 0  # already in the target, as new as any source's
    shard_files: int = 0

    def summary(self) -> str:
        return (f"added {self.added}, replaced {self.replaced}, kept {self.kept}; "
                f"{self.shard_files} shard files brought in")


def _bring(source: Path, target: Path) -> None:
    """Hard-link `source` as `target` (same file system), else copy it; under a temporary name, then rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _wanted(target: Index, newest: dict[str, tuple[Index, Record]]
            ) -> tuple[dict[str, Record], list[tuple[Index, Record]]]:
    """The target's records, and the sources' records newer than the target's (or absent from it)."""
    current = target.records()
    return current, [(index, record) for path, (index, record) in sorted(newest.items())
                     if path not in current or record.indexed_at > current[path].indexed_at]


def _bring_shards(wanted: list[tuple[Index, Record]], folder: Path) -> int:
    """Each wanted shard's files into the target's `shards/`, once; how many files were brought."""
    brought = 0
    for index, record in {(i.folder, r.entry.shard): (i, r) for i, r in wanted}.values():
        for part in ("embeddings", "spans"):
            name = f"{record.entry.shard}.{part}.npy"
            if not (folder / "shards" / name).exists():
                _bring(index.folder / "shards" / name, folder / "shards" / name)
                brought += 1
    return brought


def merge(sources: list[Path], out: Path, model: str, lock_wait: float = LOCK_WAIT,
          log: Callable[[str], None] | None = None) -> MergeStats:
    if not sources:
        raise IndexFolderError("merge needs at least one shard index")
    opened: list[Index] = []
    try:
        for folder in sources:
            opened.append(Index(folder, model, read_only=True))
        sampling = opened[0].sampling
        for index in opened[1:]:
            if index.sampling != sampling:
                raise IndexFolderError(f"{index.folder} was built with {index.sampling} but {opened[0].folder} "
                                       f"with {sampling}: merge only indexes built with the same settings")
        versions = {index.model_version for index in opened if index.model_version is not None}
        if len(versions) > 1:
            raise IndexFolderError(f"the shard indexes hold model versions {sorted(versions)}: merge only shards "
                                   f"embedded by one version (index --model-version N)")
        newest: dict[str, tuple[Index, Record]] = {}
        for index in opened:
            for path, record in index.records().items():
                if path not in newest or record.indexed_at > newest[path][1].indexed_at:
                    newest[path] = (index, record)
        stats = MergeStats()
        with Index(out, model, sampling, create=True, lock_wait=lock_wait, log=log,
                   model_version=next(iter(versions), None)) as target:
            current, wanted = _wanted(target, newest)
            if wanted:  # decided again under the lock: another writer may have brought some meanwhile
                with target.lock.held():
                    current, wanted = _wanted(target, newest)
                    stats.shard_files = _bring_shards(wanted, target.folder)
                    target.adopt([record for _, record in wanted])
            stats.kept = len(newest) - len(wanted)
            stats.replaced = sum(1 for _, r in wanted if r.entry.path in current)
            stats.added = len(wanted) - stats.replaced
        return stats
    finally:
        for index in opened:
            index.close()
