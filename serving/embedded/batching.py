"""Server-side batching with TF Serving's semantics (`--enable_batching`, `--batching_parameters_file`).

Each (model version, tensor signature) has a queue of batches. A request joins the open batch if it fits in
`max_batch_size`, else a new batch is started, unless `max_enqueued_batches` batches are already waiting: then
it is refused with UNAVAILABLE, as TF Serving refuses it. A batch is ready when it is full, when a newer one was
started behind it, or `batch_timeout_micros` after its first request. `num_batch_threads` threads run ready
batches: inputs concatenated on dim 0, padded to the next of `allowed_batch_sizes` with copies of the last
request's first row, one session run, outputs split back per request (padding dropped).

Requests whose inputs differ in dtype or non-batch shape, or which ask for other outputs, have different tensor
signatures and so different queues: they are never merged (TF Serving would merge and fail them, unless
padding is on). A batch whose requests all passed their deadline while queued is not run; they get TF
Serving's RESOURCE_EXHAUSTED "Run() timeout exceeded while waiting in batching queue".
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from s3d_retrieval.serving.embedded.errors import ServingError, invalid
from s3d_retrieval.serving.embedded.metrics import Metrics

Run = Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]]  # (fetches, feeds) -> outputs


@dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's BatchingParameters with its defaults (those of its shared batch scheduler's queues)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self):
        sizes = self.allowed_batch_sizes
        if sizes and sizes[-1] != self.max_batch_size:
            raise ValueError(f"Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                             f"{sizes[-1]}; expected {self.max_batch_size}")

    @classmethod
    def from_proto(cls, params) -> BatchingOptions:
        """From a parsed `batching.config` (fields left out keep TF Serving's defaults)."""
        given = {name: getattr(params, name).value for name in
                 ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
                 if params.HasField(name)}
        return cls(**given, allowed_batch_sizes=tuple(params.allowed_batch_sizes))

    def execution_size(self, size: int) -> int:
        """The batch size a batch of `size` rows runs at: the next allowed size, or itself."""
        return next((s for s in self.allowed_batch_sizes if s >= size), size)


@dataclass
class Task:
    feeds: dict[str, np.ndarray]
    size: int
    deadline: float | None  # time.monotonic() seconds, or None
    enqueued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[np.ndarray] | None = None
    error: ServingError | None = None


@dataclass
class Batch:
    run: Run
    fetches: list[str]
    tasks: list[Task] = field(default_factory=list)
    size: int = 0
    opened: float = field(default_factory=time.monotonic)
    closed: bool = False


def _signature(owner: object, fetches: Sequence[str], feeds: dict[str, np.ndarray]) -> tuple:
    """Requests that may share a batch: same version, same outputs, same dtypes and non-batch shapes."""
    return (id(owner), tuple(fetches),
            tuple(sorted((name, value.dtype.str, value.shape[1:]) for name, value in feeds.items())))


class BatchScheduler:
    """The server's batch threads, shared by every queue (as TF Serving's shared batch scheduler is)."""

    def __init__(self, options: BatchingOptions, metrics: Metrics):
        assert metrics.batching is not None, "a scheduler's metrics count its batches (Metrics(batching=True))"
        self.options, self.metrics, self.counts = options, metrics, metrics.batching
        self._queues: dict[tuple, deque[Batch]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(max(1, options.num_batch_threads))]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the threads; a request still queued (none is, once the versions are unloaded) is refused."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            queued = [task for queue in self._queues.values() for batch in queue for task in batch.tasks]
            self._queues.clear()
        for task in queued:
            task.error = ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            task.done.set()
        for thread in self._threads:
            thread.join()

    def run(self, owner: object, run: Run, fetches: list[str], feeds: dict[str, np.ndarray],
            deadline: float | None = None) -> list[np.ndarray]:
        """Queue one request's feeds, wait for its batch to run, and return its share of the outputs."""
        sizes = {value.shape[0] if value.ndim else -1 for value in feeds.values()}
        if len(sizes) != 1 or -1 in sizes:
            raise invalid("Batching session Run() input tensors must have equal 0th-dimension size")
        task = Task(feeds, sizes.pop(), deadline)
        if task.size > self.options.max_batch_size:
            raise invalid(f"Task size {task.size} is larger than maximum input batch size "
                          f"{self.options.max_batch_size}")
        self.counts.input_batch_size.add(task.size)
        key = _signature(owner, fetches, feeds)
        with self._cond:
            queue = self._queues.setdefault(key, deque())
            open_batch = queue[-1] if queue and not queue[-1].closed else None
            if open_batch is None or open_batch.size + task.size > self.options.max_batch_size:
                if len(queue) >= self.options.max_enqueued_batches:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                       "The batch scheduling queue to which this task was submitted is full")
                if open_batch is not None:
                    open_batch.closed = True
                open_batch = Batch(run, list(fetches))
                queue.append(open_batch)
            open_batch.tasks.append(task)
            open_batch.size += task.size
            open_batch.closed |= open_batch.size == self.options.max_batch_size
            self._cond.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None  # a task is done with outputs or an error
        return task.outputs

    def _ready(self, now: float) -> tuple[Batch | None, float | None]:
        """A batch to run now, else how long until the oldest open one times out."""
        timeout = self.options.batch_timeout_micros / 1e6
        wake = None
        for key, queue in list(self._queues.items()):
            if not queue:
                del self._queues[key]
                continue
            first = queue[0]
            due = first.opened + timeout
            if first.closed or len(queue) > 1 or now >= due:
                return queue.popleft(), None
            wake = due if wake is None else min(wake, due)
        return None, wake

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    batch, wake = self._ready(time.monotonic())
                    if batch is not None:
                        break
                    self._cond.wait(None if wake is None else max(0.0, wake - time.monotonic()))
            self._process(batch)

    def _process(self, batch: Batch) -> None:
        now = time.monotonic()
        for task in batch.tasks:
            self.counts.queuing_latency.add((now - task.enqueued) * 1e6, "")
        try:
            if all(t.deadline is not None and t.deadline <= now for t in batch.tasks):
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   "Run() timeout exceeded while waiting in batching queue")
            outputs = self._run(batch)
        except ServingError as err:
            for task in batch.tasks:
                task.error = err
                task.done.set()
            return
        start = 0
        for task in batch.tasks:
            task.outputs = [value[start: start + task.size] for value in outputs]
            start += task.size
            task.done.set()

    def _run(self, batch: Batch) -> list[np.ndarray]:
        target = self.options.execution_size(batch.size)
        padding = target - batch.size
        last = batch.tasks[-1]
        feeds = {name: np.concatenate([t.feeds[name] for t in batch.tasks]
                                      + [np.repeat(last.feeds[name][:1], padding, axis=0)])
                 for name in last.feeds}
        batching = self.counts
        batching.processed_batch_size.add(target)
        batching.padding_size.add(padding, str(target))
        try:
            outputs = batch.run(batch.fetches, feeds)
        except ServingError:
            raise
        except Exception as err:  # noqa: BLE001 - any run failure goes to every request of the batch
            raise ServingError(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}") from None
        finally:
            batching.wrapped_run_count.add(1)
        for value in outputs:
            if np.ndim(value) == 0 or len(value) != target:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"Batched output tensor has 0th dimension {np.shape(value)[:1]} but expected "
                                   f"{target}")
        return outputs
