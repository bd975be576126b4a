"""Decoding ahead of the consumer in threads, bounded by a number of windows rather than whole videos.

Each of the next `videos` items is decoded in its own thread into a queue of at most `buffer` windows, so
memory holds `videos * (buffer + 1)` windows however long or large the videos are, while the decoders
(OpenCV releases the GIL) keep ahead of the requests. A consumer that moves on or stops early cancels the
threads it no longer reads.
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
W = TypeVar("W")
_END = object()
_POLL = 0.1  # seconds a blocked producer waits before checking whether it was cancelled


class Feed(Generic[W]):
    """One item's windows, produced in a thread into a bounded queue and read in order."""

    def __init__(self, produce: Callable[[], Iterator[W]], buffer: int):
        self._produce = produce
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, buffer))
        self._cancelled = threading.Event()

    def run(self) -> None:
        try:
            for window in self._produce():
                if not self._put(window):
                    return
            self._put(_END)
        except Exception as err:  # handed to the reader, who decides what it means
            self._put(err)

    def _put(self, item: object) -> bool:
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Feed[W]:
        return self

    def __next__(self) -> W:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # stays exhausted
            raise StopIteration
        if isinstance(item, Exception):
            self._queue.put(_END)
            raise item
        return item

    def cancel(self) -> None:
        self._cancelled.set()


def decode_ahead(items: Iterable[T], produce: Callable[[T], Iterator[W]], videos: int = 2,
                 buffer: int = 8) -> Iterator[tuple[T, Feed[W]]]:
    """(item, its windows) in order; `produce(item)` runs in a thread up to `videos` items ahead."""
    videos = max(1, videos)
    source = iter(items)
    feeds: deque[tuple[T, Feed[W]]] = deque()
    with ThreadPoolExecutor(max_workers=videos, thread_name_prefix="decode") as pool:

        def start_next() -> None:
            for item in source:
                feed = Feed(lambda: produce(item), buffer)
                pool.submit(feed.run)
                feeds.append((item, feed))
                return

        try:
            for _ in range(videos):
                start_next()
            while feeds:
                item, feed = feeds.popleft()
                try:
                    yield item, feed
                finally:
                    feed.cancel()
                start_next()
        finally:
            for _, feed in feeds:
                feed.cancel()
