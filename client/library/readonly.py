"""A reader's SQLite connection that survives a writer killed inside its transaction, and writes nothing shared.

A writer killed inside a transaction leaves a hot rollback journal: the database file may hold half of the
transaction's pages, and only the journal says how to undo them. SQLite lets a connection that can write roll it
back; a read-only one (`mode=ro`, or any connection on a read-only mount) fails every read with
SQLITE_READONLY_ROLLBACK until a writer opens the index. Here a reader that meets a hot journal copies the
database and the journal into a private temporary folder (under TMPDIR) and lets SQLite roll back the copy: it
reads exactly the last committed state, and the shared folder stays as it is for the next writer to recover.

While it copies, the reader holds a read lock on SQLite's SHARED byte range of the database, as SQLite's own
readers do: no writer can take the EXCLUSIVE lock it needs to roll the journal back or to commit, so the database
and the journal cannot change under the copy, on a local disk or on NFS (which honours byte-range locks). The lock
is taken on one descriptor kept open for the reader's life: POSIX locks belong to the process, and closing any
descriptor of the file would drop the locks this process's other SQLite connections hold on it. The copy is kept
while the database and the journal are unchanged, dropped once a writer has rolled the journal back, and a copy
left by a reader that was killed is deleted by the next one on the machine.

Why not WAL: a WAL database needs shared memory between every process that opens it, which a network file system
(a Kubernetes ReadWriteMany volume) cannot give across machines, and a reader on a read-only mount can open it
only in narrow cases. The rollback journal works on both; the price is one copy of the database per crash, paid
by each reader until a writer comes.
"""
from __future__ import annotations

import fcntl
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
PREFIX = "s3d-index-recovered-"  # then the reader's pid: a copy whose process is gone is deleted
SHARED_FIRST, SHARED_SIZE = 0x40000002, 510  # SQLite's SHARED lock range (os_unix.c: PENDING_BYTE + 2, 510 bytes)


def _signature(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in map(os.stat, paths))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_copies(folder: str | None = None) -> None:
    """Delete the copies of readers that no longer run (killed before they could delete their own)."""
    base = Path(folder or tempfile.gettempdir())
    for path in base.glob(f"{PREFIX}*"):
        pid = path.name.removeprefix(PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


class ReadOnlyDB:
    """`read(fn)` runs `fn(connection)` on the database as last committed; one reader at a time per object."""

    def __init__(self, path: Path):
        self.path = path
        self.journal = path.with_name(path.name + "-journal")
        self._lock = threading.RLock()
        self._copy: tuple[tuple, str, sqlite3.Connection] | None = None  # (signature, folder, connection)
        self._fd = self._open()
        self._ino = os.fstat(self._fd).st_ino
        self._main = self._connect()

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDONLY)
        except OSError as err:
            raise sqlite3.OperationalError(err.strerror) from None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False)

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                moved = os.stat(self.path).st_ino != self._ino
            except OSError as err:
                raise sqlite3.OperationalError(err.strerror) from None
            if moved:  # the folder was made again: read the new database
                self._drop_copy()
                self._main.close()
                os.close(self._fd)
                self._fd = self._open()
                self._ino, self._main = os.fstat(self._fd).st_ino, self._connect()
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
        """A connection to a private copy of the database with the hot journal rolled back (made under the SHARED
        lock, so nothing changes while it is copied)."""
        fcntl.lockf(self._fd, fcntl.LOCK_SH, SHARED_SIZE, SHARED_FIRST, os.SEEK_SET)
        try:
            try:
                signature = _signature(self.path, self.journal)
            except FileNotFoundError:  # a writer rolled it back before the lock was ours
                return self._main
            if self._copy is not None and self._copy[0] == signature:
                return self._copy[2]
            self._drop_copy()
            sweep_copies()
            folder = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
            try:
                target = Path(folder) / self.path.name
                with open(target, "wb") as out:
                    self._copy_db(out)
                shutil.copyfile(self.journal, target.with_name(self.journal.name))
                connection = sqlite3.connect(target, check_same_thread=False)
                connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # the rollback happens here
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, SHARED_SIZE, SHARED_FIRST, os.SEEK_SET)
        self._copy = (signature, folder, connection)
        return connection

    def _copy_db(self, out) -> None:
        """The database's bytes, read through the kept descriptor (opening the file again and closing it would
        drop this process's SQLite locks on it)."""
        offset = 0
        while chunk := os.pread(self._fd, 1 << 20, offset):
            out.write(chunk)
            offset += len(chunk)

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
            os.close(self._fd)
