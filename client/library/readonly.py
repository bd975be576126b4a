"""A reader's SQLite connection that survives a writer killed inside its transaction, and writes nothing shared.

A writer killed inside a transaction leaves a hot rollback journal: the database file may hold half of the
transaction's pages, and only the journal says how to undo them. SQLite lets a connection that can write roll it
back; a read-only one (`mode=ro`, or any connection on a read-only mount) fails every read with
SQLITE_READONLY_ROLLBACK until a writer opens the index. Here a reader that meets a hot journal copies the
database and the journal into a private temporary folder and lets SQLite roll back the copy: it reads exactly the
last committed state, and the shared folder stays as it is for the next writer to recover. The copy is kept while
the database and the journal are unchanged, and dropped once a writer has rolled the journal back.

Why not WAL: a WAL database needs shared memory between every process that opens it, which a network file system
(a Kubernetes ReadWriteMany volume) cannot give across machines, and a reader on a read-only mount can open it
only in narrow cases. The rollback journal works on both; the price is one copy of the database per crash, paid
by each reader until a writer comes.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
HOT = "SQLITE_READONLY_ROLLBACK"
ATTEMPTS = 3  # copies tried while the files keep changing under the copy (a writer recovering them meanwhile)


def _signature(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in map(os.stat, paths))


class ReadOnlyDB:
    """`read(fn)` runs `fn(connection)` on the database as last committed; one reader at a time per object."""

    def __init__(self, path: Path):
        self.path = path
        self.journal = path.with_name(path.name + "-journal")
        self._ino = self._file()
        self._main = self._connect()
        self._copy: tuple[tuple, str, sqlite3.Connection] | None = None  # (signature, folder, connection)
        self._lock = threading.RLock()

    def _file(self) -> int:
        """The database file's inode (a file replaced under the same name is another database)."""
        try:
            return os.stat(self.path).st_ino
        except OSError as err:
            raise sqlite3.OperationalError(err.strerror) from None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False)

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if (ino := self._file()) != self._ino:  # the folder was made again: read the new database
                self._main.close()
                self._drop_copy()
                self._ino, self._main = ino, self._connect()
            try:
                found = fn(self._main)
            except sqlite3.OperationalError as err:
                if getattr(err, "sqlite_errorname", "") != HOT:
                    raise
                if self._main.in_transaction:
                    self._main.rollback()
                return fn(self._recovered())
            self._drop_copy()  # the journal was rolled back by a writer: the real file answers again
            return found

    def _recovered(self) -> sqlite3.Connection:
        """A connection to a private copy of the database with the hot journal rolled back."""
        for _ in range(ATTEMPTS):
            try:
                before = _signature(self.path, self.journal)
                if self._copy is not None and self._copy[0] == before:
                    return self._copy[2]
                folder = tempfile.mkdtemp(prefix="s3d-index-recovered-")
                target = Path(folder) / self.path.name
                shutil.copyfile(self.path, target)
                shutil.copyfile(self.journal, target.with_name(self.journal.name))
                if _signature(self.path, self.journal) != before:  # a writer touched them meanwhile: again
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
            except FileNotFoundError:  # the journal is gone: a writer recovered the database meanwhile
                return self._main
            connection = sqlite3.connect(target, check_same_thread=False)
            connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # the rollback happens here
            self._drop_copy()
            self._copy = (before, folder, connection)
            return connection
        raise sqlite3.OperationalError(f"{self.path}: a writer keeps changing the database while it is recovered; "
                                       f"read again")

    def _drop_copy(self) -> None:
        if self._copy is not None:
            _, folder, connection = self._copy
            self._copy = None
            connection.close()
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            self._drop_copy()
            self._main.close()
