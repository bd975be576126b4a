"""Blue/green indexes: a name readers follow, pointed at one index at a time (`promote`), and back (`rollback`).

A new model version is never mixed into an index: a new index is built with it beside the one in service, and
the name is moved to it in one atomic step, checked first by an eval gate if asked. Every reader given the name
(`search --index NAME`, `eval`, the Python API, the page) follows it: the API at its next call, the page within
`--reload-every`; a request in flight finishes on the index it began on. Writers given the name write into the
index it points at. The names' history (each target, its model version, when) is kept beside the name, so that
`rollback` points it back.

A name is store-specific (`Name`): for a folder (`FolderName`, here) a symbolic link replaced by rename, for
Milvus a collection alias (`client.milvus.names`). The symbolic link was chosen over a small pointer file: every
tool and every earlier release opens it as the index it points at (`ls -l` shows which), its replacement by
`rename` is atomic on every POSIX file system, NFS included, and a reader resolves it with one system call.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from s3d_retrieval.client.defaults import LOCK_WAIT
from s3d_retrieval.client.files import atomic_write
from s3d_retrieval.client.library.index import DB, Folder
from s3d_retrieval.client.library.lock import WriterLock
from s3d_retrieval.client.errors import Error
from s3d_retrieval.client.library.store import Location, StoreError


class NameError_(StoreError):
    """A promote or rollback that cannot be done as asked; nothing was changed. One line."""


class GateRefused(Error):
    """The eval gate found the new index worse than the one in service; nothing was changed. `figures`: both."""

    def __init__(self, message: str, figures: list[str]):
        super().__init__(message)
        self.figures = figures


@dataclass(frozen=True)
class Step:
    """One entry of a name's history: the index it pointed at, that index's model version, since when."""

    target: str
    model_version: int | None
    at: str

    @classmethod
    def now(cls, target: str, model_version: int | None) -> Step:
        return cls(target, model_version, datetime.now(timezone.utc).isoformat(timespec="seconds"))


class Name(Protocol):
    """A name readers follow, for one store."""

    def __str__(self) -> str: ...

    def points_at(self) -> Location | None:
        """The index the name points at now (None: no name yet). NameError_ when a real index has the name."""

    def point(self, target: Location) -> None:
        """Point the name at `target` in one atomic step."""

    def history(self) -> list[Step]:
        """Where the name pointed, oldest first (the last: now)."""

    def record(self, history: list[Step]) -> None:
        """Keep `history` beside the name (replaced whole, atomically)."""

    def locked(self) -> AbstractContextManager[None]:
        """One promote or rollback at a time."""

    def connected(self) -> AbstractContextManager[None]:
        """Able to read the name, without its lock: to refuse bad input before locking."""

    def same(self, target: Location) -> str:
        """How the history names `target`."""

    def location(self, target: str) -> Location:
        """The index a history entry names."""


class FolderName:
    """A folder name: a symbolic link to an index folder (relative when both live in one folder, so the pair can
    be mounted anywhere), its history in `.NAME.history.json` and its lock `.NAME.promote.lock`, both beside it."""

    def __init__(self, path: Path, lock_wait: float = LOCK_WAIT):
        self.path = Path(os.path.abspath(path))
        self.lock = WriterLock(self.path.parent, lock_wait, name=f".{self.path.name}.promote.lock",
                               what=f"the name {self.path.name}")
        self.file = self.path.with_name(f".{self.path.name}.history.json")

    def __str__(self) -> str:
        return str(self.path)

    def points_at(self) -> Location | None:
        if not self.path.parent.is_dir():
            raise NameError_(f"{self.path.parent}: no such folder; a name lives in a folder, beside its indexes")
        if self.path.is_symlink():
            return Folder(Path(os.path.realpath(self.path)))
        if self.path.exists():
            what = "an index folder" if (self.path / DB).is_file() else "a folder or file"
            raise NameError_(f"{self.path} is {what}, not a name: promote never replaces it; give a new name (a "
                             f"symbolic link it makes) and point readers at that")
        return None

    def point(self, target: Location) -> None:
        assert isinstance(target, Folder)
        real, parent = os.path.realpath(target.path), os.path.realpath(self.path.parent)
        link = os.path.relpath(real, parent) if os.path.dirname(real) == parent else real
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        os.symlink(link, tmp)
        try:
            os.replace(tmp, self.path)  # the one atomic step readers see
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def history(self) -> list[Step]:
        try:
            return [Step(**step) for step in json.loads(self.file.read_text())]
        except FileNotFoundError:
            return []
        except (ValueError, TypeError) as err:
            raise NameError_(f"{self.file}: the history of {self.path} cannot be read ({err}); fix or remove it") \
                from None

    def record(self, history: list[Step]) -> None:
        atomic_write(self.file, lambda f: f.write(json.dumps([s.__dict__ for s in history], indent=1)), "w")

    @contextmanager
    def locked(self) -> Iterator[None]:
        try:
            with self.lock.held():
                yield
        except OSError as err:  # the folder cannot be written: one line, nothing changed
            raise NameError_(f"{self.path}: cannot move the name ({err.strerror}); nothing was changed") from None

    @contextmanager
    def connected(self) -> Iterator[None]:
        yield

    def same(self, target: Location) -> str:
        assert isinstance(target, Folder)
        return os.path.realpath(target.path)

    def location(self, target: str) -> Location:
        return Folder(Path(target))


def move(name: Name, target: Location, history: list[Step]) -> None:
    """Point `name` at `target` and keep `history` beside it; a history that cannot be written puts the name back
    where it pointed (the caller holds the name's lock)."""
    before = name.points_at()
    name.point(target)
    try:
        name.record(history)
    except BaseException:
        if before is not None:
            name.point(before)
        raise


def rollback_step(name: Name) -> tuple[Step, Step]:
    """(now, before): the name's last promote and the one before it, to point back to."""
    history = name.history()
    if len(history) < 2:
        raise NameError_(f"{name}: no earlier index to roll back to ({len(history)} promote(s) in its history)")
    return history[-1], history[-2]
