"""One writer at a time per index: an OS file lock (`flock`) on `<index>/writer.lock`, behind a lock per folder
within the process.

The kernel releases the lock when its holder exits, however it exits, so a lock left by a killed process never
blocks anyone. The file's text names the holder (pid, host, command, since when) for the writer that waits.
Writers hold it only while they change the index (a commit, a removal, a merge's adoption, a search-structure
build, the sweep of unused files), not while they decode and embed, so two indexing runs embed side by side and
commit in turn. Readers never take it.

On NFS, Linux emulates `flock` with a whole-file POSIX lock, which belongs to the process, not to the open file:
two writers in one process (threads of an application using `Client`) would both acquire it, and closing either's
file would drop the other's. So within a process a writer first takes the folder's `threading` lock, and only
then opens the file and locks it: at most one open lock file per folder and process, whatever the file system.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from s3d_retrieval.client.errors import Error

NAME = "writer.lock"
POLL = 0.2  # seconds between attempts while another writer holds the lock

_GATES: dict[str, threading.Lock] = {}  # real lock file -> the lock this process's holders of it take first
_GATES_LOCK = threading.Lock()


def _gate(path: Path) -> threading.Lock:
    with _GATES_LOCK:
        return _GATES.setdefault(os.path.realpath(path), threading.Lock())


class LockTimeout(Error):
    """Another writer held the index longer than this command's patience."""


def holder(path: Path) -> str:
    """Who holds (or last held) the lock, as its file says."""
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"


class WriterLock:
    """Re-entrant within one object: nested `held()` blocks take the lock once."""

    def __init__(self, folder: Path, patience: float, log: Callable[[str], None] | None = None, name: str = NAME,
                 what: str = "the index"):
        """The lock `folder/name`: an index's writers' by default (`promote` takes one of its own beside a name,
        for `what` the messages name)."""
        self.path, self.patience, self.log, self.what = folder / name, patience, log, what
        self._gate = _gate(self.path)
        self._fd: int | None = None
        self._depth = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._depth == 0:
            self._acquire(self.patience)
        self._depth += 1
        try:
            yield
        finally:
            self._release_one()

    @contextmanager
    def free(self) -> Iterator[bool]:
        """Held if no other writer holds it now (True), else nothing held and no wait (False): for work that only
        a writer alone may do, and that can wait for the next one (sweeping what dead writers left)."""
        if self._depth == 0 and not self._acquire(None):
            yield False
            return
        self._depth += 1
        try:
            yield True
        finally:
            self._release_one()

    def _release_one(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._release()

    def _acquire(self, patience: float | None) -> bool:
        """Take the lock, waiting up to `patience` seconds (LockTimeout after); None: only if free now."""
        deadline, said = time.monotonic() + (patience or 0), False
        while not self._gate.acquire(blocking=False):  # another writer of this process holds the folder
            if patience is None:
                return False
            said = self._wait(deadline, said, f"pid {os.getpid()}, this process")
        fd = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if patience is None:
                        os.close(fd)
                        self._gate.release()
                        return False
                    said = self._wait(deadline, said, holder(self.path))
            os.ftruncate(fd, 0)
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}: "
                          f"{' '.join(sys.argv)[:200]}\n".encode(), 0)
        except BaseException:  # a timeout, or the file system refusing: nothing stays held
            if fd is not None:
                os.close(fd)
            self._gate.release()
            raise
        self._fd = fd
        return True

    def _wait(self, deadline: float, said: bool, who: str) -> bool:
        """One pause while another writer (`who`) holds the index, LockTimeout past the deadline; says so once.
        The lock file is read for `who` only past the gate: with a writer of this process holding the lock,
        opening and closing the file would drop its lock where flock is emulated by POSIX locks."""
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{self.path.parent}: another writer has held {self.what} for over {self.patience:g} s "
                              f"({who}); run again when it is done, or raise --lock-wait")
        if not said:
            (self.log or _stderr)(f"waiting up to {self.patience:g} s for {self.what}: another writer holds it "
                                  f"({who})")
        time.sleep(POLL)
        return True

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._gate.release()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
