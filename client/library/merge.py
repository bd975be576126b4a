"""The `merge` verb: shard indexes (from `index --shard I/N` on many machines) combined into one.

Shard files are immutable and named by uuid, so a merge links (or, across file systems, copies) each source's
shard files into the target and records the sources' entries there in one SQLite transaction: all of a merge
or nothing, and no embedding is rewritten. Indexes built with another sampling or model are refused. A path
present in several indexes keeps its newest entry (by when it was indexed); re-running the same merge finds
every entry already there and changes nothing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from client.library.index import Index, IndexFolderError, Record


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


def merge(sources: list[Path], out: Path, model: str) -> MergeStats:
    if not sources:
        raise IndexFolderError("merge needs at least one shard index")
    opened = [Index(folder, model, read_only=True) for folder in sources]
    try:
        sampling = opened[0].sampling
        for index in opened[1:]:
            if index.sampling != sampling:
                raise IndexFolderError(f"{index.folder} was built with {index.sampling} but {opened[0].folder} "
                                       f"with {sampling}: merge only indexes built with the same settings")
        newest: dict[str, tuple[Index, Record]] = {}
        for index in opened:
            for path, record in index.records().items():
                if path not in newest or record.indexed_at > newest[path][1].indexed_at:
                    newest[path] = (index, record)
        stats = MergeStats()
        with Index(out, model, sampling, create=True) as target:
            current = target.records()
            wanted = [(index, record) for path, (index, record) in sorted(newest.items())
                      if path not in current or record.indexed_at > current[path].indexed_at]
            stats.kept = len(newest) - len(wanted)
            for index, record in {(i.folder, r.entry.shard): (i, r) for i, r in wanted}.values():
                for part in ("embeddings", "spans"):
                    name = f"{record.entry.shard}.{part}.npy"
                    if not (target.folder / "shards" / name).exists():
                        _bring(index.folder / "shards" / name, target.folder / "shards" / name)
                        stats.shard_files += 1
            target.adopt([record for _, record in wanted])
            stats.replaced = sum(1 for _, r in wanted if r.entry.path in current)
            stats.added = len(wanted) - stats.replaced
        return stats
    finally:
        for index in opened:
            index.close()
