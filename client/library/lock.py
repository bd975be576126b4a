"""One writer at a time per index: an OS file lock (`flock`) on `<index>/writer.lock`.

The kernel releases the lock when its holder exits, however it exits, so a lock left by a killed process never
blocks anyone. The file's text names the holder (pid, host, command, since when) for the writer that waits.
Writers hold it only while they change the index (a commit, a removal, a merge's adoption, a search-structure
build, the sweep of unused files), not while they decode and embed, so two indexing runs embed side by side and
commit in turn. Readers never take it. On NFS, Linux maps `flock` to byte-range locks that NFSv4 servers honour.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from s3d_retrieval.client.errors import Error

NAME = "writer.lock"
POLL = 0.2  # seconds between attempts while another writer holds the lock


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

    def __init__(self, folder: Path, patience: float, log: Callable[[str], None] | None = None):
        self.path, self.patience, self.log = folder / NAME, patience, log
        self._fd: int | None = None
        self._depth = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._depth == 0:
            self._acquire()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._release()

    def _acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline, said = time.monotonic() + self.patience, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockTimeout(f"{self.path.parent}: another writer has held the index for over "
                                      f"{self.patience:g} s ({holder(self.path)}); run again when it is done, or "
                                      f"raise --lock-wait") from None
                if not said:
                    (self.log or _stderr)(f"waiting up to {self.patience:g} s for the index: another writer holds "
                                          f"it ({holder(self.path)})")
                    said = True
                time.sleep(POLL)
        os.ftruncate(fd, 0)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}: "
                      f"{' '.join(sys.argv)[:200]}\n".encode(), 0)
        self._fd = fd

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
