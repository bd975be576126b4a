"""A pool of clip readers that keeps the training step fed: each step's clips are decoded in parallel threads
(OpenCV releases the GIL while it decodes), `prefetch` steps ahead, and a video that cannot be read is named,
skipped and counted when it is met, its slot taken by a replacement (`Plan.replacement`).

Memory is bounded by design: at most `prefetch` + 2 steps of clips exist at once (those read ahead, the one being
assembled and the one training), whatever the corpus.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from s3d_retrieval.client.decode.video import VideoError, pad, sampled_frames
from s3d_retrieval.model.clips import Batch, ClipSampling, Draw, Plan, read_clip
from s3d_retrieval.model.narration import DataError

PREFETCH = 2  # steps decoded ahead of the one training
ATTEMPTS = 32  # replacements tried for one slot before the data is declared unreadable
# Times a video fails to open before the session stops trying it; not at the first: a file on a network mount
# may be missing for a moment.
OPEN_FAILURES = 3


def default_readers() -> int:
    """One reader per core this process may use (a container's CPU set, not the host's)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class FrameCache:
    """Optional, for small corpora: whole videos' sampled frames kept in memory up to `limit` bytes (least recently
    used out first), so a video drawn again is not decoded again. A video larger than an eighth of the limit is
    never kept, nor one whose whole decode fails (a corrupt frame must fail only the clips that span it): their
    clips are read by seeking. The clip it cuts is the clip `read_clip` decodes."""

    def __init__(self, limit: int):
        self.limit = limit
        self._videos: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._seeking: set[Path] = set()  # too large to keep, or failing somewhere: not decoded whole again
        self._bytes = 0
        self._lock = threading.Lock()

    def read(self, path: Path, first: int, sampling: ClipSampling) -> np.ndarray:
        with self._lock:
            frames = self._videos.get(path)
            if frames is not None:
                self._videos.move_to_end(path)
            seeking = path in self._seeking
        if seeking:
            return read_clip(path, first, sampling)
        if frames is None:
            frames = self._decode(path, sampling)
            if frames is None:
                return read_clip(path, first, sampling)
        length = sampling.frames
        if len(frames) < length:
            return pad(list(frames), length)
        first = min(first, len(frames) - length)
        return frames[first: first + length]

    def _decode(self, path: Path, sampling: ClipSampling) -> np.ndarray | None:
        kept, size, whole = [], 0, True
        try:
            for frame in sampled_frames(path, sampling.fps, sampling.size):
                kept.append(frame)
                size += frame.nbytes
                if size > self.limit // 8:
                    whole = False
                    break
        except (VideoError, OSError):  # read by seeking instead: only the clips that span the failure fail
            whole = False
        if not whole:
            with self._lock:
                self._seeking.add(path)
            return None
        frames = np.stack(kept)
        with self._lock:
            if path not in self._videos:
                self._videos[path] = frames
                self._bytes += frames.nbytes
            while self._bytes > self.limit:
                self._bytes -= self._videos.popitem(last=False)[1].nbytes
        return frames


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
        self._open_failures: dict[Path, int] = {}  # videos that failed to open: at OPEN_FAILURES, not tried again
        self._lock = threading.Lock()

    def batches(self, start: int, stop: int) -> Generator[Batch, None, None]:
        """This worker's batch of each step in [start, stop), in order; `prefetch` steps are read ahead."""
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
                    batch = Batch(np.stack([clip for clip, _ in results]), [t for _, texts in results for t in texts])
                    del results
                    yield batch
                    del batch
            finally:
                for futures in pending:
                    for future in futures:
                        future.cancel()

    def _slot(self, step: int, slot: int, draw: Draw, planned: set[int]) -> tuple[np.ndarray, list[str]]:
        """The planned clip, or the first replacement that reads. Whether a clip reads depends on the file and the
        span only, so the outcome does not depend on what this process met before; a video that failed to open is
        tried again when drawn again (it may have been missing for a moment), until it has failed OPEN_FAILURES
        times."""
        for attempt in range(ATTEMPTS):
            path = self.plan.path(draw)
            if self._open_failures.get(path, 0) < OPEN_FAILURES:
                try:
                    return self.read(path, draw.first, self.plan.sampling), self.plan.texts(draw)
                except (VideoError, OSError) as err:
                    self._skip(path, str(err).removeprefix(f"{path}: "),
                               unopenable=not path.is_file() or "cannot be opened" in str(err))
            draw = self.plan.replacement(step, slot, attempt, planned)
        raise DataError(f"{self.plan.path(draw).parent}: {ATTEMPTS} clips in a row could not be read "
                        f"({len(self.skipped)} videos skipped so far); check the data")

    def _skip(self, path: Path, why: str, unopenable: bool) -> None:
        with self._lock:
            if unopenable:
                self._open_failures[path] = self._open_failures.get(path, 0) + 1
            if path in self.skipped:
                return
            self.skipped[path] = why
        self.log(f"skipped {path}: {why}")
