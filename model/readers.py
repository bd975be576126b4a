"""A pool of clip readers that keeps the training step fed: each step's clips are decoded in parallel threads
(OpenCV releases the GIL while it decodes), `prefetch` steps ahead, and a video that cannot be read is named,
skipped and counted when it is met, its slot taken by a replacement (`Plan.replacement`).

Memory is bounded by design: at most `prefetch` + 1 steps of clips exist at once, whatever the corpus.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from s3d_retrieval.client.decode.video import VideoError
from s3d_retrieval.model.clips import Batch, ClipSampling, Draw, Plan, read_clip
from s3d_retrieval.model.narration import DataError

PREFETCH = 2  # steps decoded ahead of the one training
ATTEMPTS = 32  # replacements tried for one slot before the data is declared unreadable


def default_readers() -> int:
    """One reader per core this process may use (a container's CPU set, not the host's)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class ClipReader:
    """Reads this worker's share of each step's planned clips: slots [index * b, (index + 1) * b) of the global
    batch, b = batch / workers."""

    def __init__(self, plan: Plan, batch: int, readers: int, prefetch: int = PREFETCH, share: tuple[int, int] = (0, 1),
                 log: Callable[[str], None] = print,
                 read: Callable[[Path, int, ClipSampling], np.ndarray] = read_clip):
        index, workers = share
        self.plan, self.batch, self.readers, self.prefetch, self.log, self.read = plan, batch, readers, prefetch, log, read
        local = batch // workers
        self.slots = range(index * local, (index + 1) * local)
        self.skipped: dict[Path, str] = {}  # video -> why, in the order they were met
        self._lock = threading.Lock()

    def batches(self, start: int, stop: int) -> Iterator[Batch]:
        """This worker's batch of each step in [start, stop), in order."""
        with ThreadPoolExecutor(self.readers, thread_name_prefix="clip-reader") as pool:
            pending: deque[list[Future]] = deque()
            step = start
            try:
                while step < stop or pending:
                    while step < stop and len(pending) <= self.prefetch:
                        draws = self.plan.draws(step, self.batch)
                        planned = {d.video for d in draws}
                        pending.append([pool.submit(self._slot, step, slot, draws[slot], planned)
                                        for slot in self.slots])
                        step += 1
                    results = [future.result() for future in pending.popleft()]
                    yield Batch(np.stack([clip for clip, _ in results]), [t for _, texts in results for t in texts])
            finally:
                for futures in pending:
                    for future in futures:
                        future.cancel()

    def _slot(self, step: int, slot: int, draw: Draw, planned: set[int]) -> tuple[np.ndarray, list[str]]:
        for attempt in range(ATTEMPTS + 1):
            path = self.plan.path(draw)
            if path not in self.skipped:  # a known-bad video fails again: skip it without decoding
                try:
                    return self.read(path, draw.first, self.plan.sampling), self.plan.texts(draw)
                except (VideoError, OSError) as err:
                    self._skip(path, str(err).removeprefix(f"{path}: "))
            draw = self.plan.replacement(step, slot, attempt, planned)
        raise DataError(f"{self.plan.path(draw).parent}: {ATTEMPTS} videos in a row could not be read "
                        f"({len(self.skipped)} skipped so far); check the data")

    def _skip(self, path: Path, why: str) -> None:
        with self._lock:
            if path in self.skipped:
                return
            self.skipped[path] = why
        self.log(f"skipped {path}: {why}")
