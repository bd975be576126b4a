"""Prometheus metrics under TF Serving's names and rules, in its exporter's text format.

What is counted follows TF Serving's source (`../shared/reference/tf-serving.md`):
- `request_count{model_name,status}`: gRPC Predict (Classify and Regress, which this server does not offer)
  and every REST request, `status` the error code's name; never gRPC GetModelMetadata or GetModelStatus.
- `request_latency{model_name,API,entrypoint}` (us): successful calls only; gRPC `API="Predict"`,
  `entrypoint="GRPC"`; REST `API` = the URL's verb (`predict`; empty for GET status and metadata),
  `entrypoint="REST"`.
- `runtime_latency{model_name,API="Predict",runtime="TF1"}` (us): the session run of a successful Predict,
  warmup included, batching queue included when batching is on.
- with batching on, `batching_session:{input_batch_size, processed_batch_size, padding_size{execution_batch_size},
  queuing_latency{thread_pool_name}, wrapped_run_count}`.
Histograms use TF's exponential bucket limits (a value lands in the first bucket whose limit exceeds it) and
print `le` and sums with six significant digits, as TF's exporter does. Written here rather than with
prometheus_client, whose counters always gain a `_total` suffix: dashboards query TF Serving's names exactly.
"""
from __future__ import annotations

import bisect
import re
import threading
from dataclasses import dataclass, field

PREFIX = "/tensorflow/serving/"


def exponential(scale: float, growth: float, count: int) -> list[float]:
    return [scale * growth ** i for i in range(count)]


LATENCY_BUCKETS = exponential(10, 1.8, 33)  # us, ~20 minutes
SIZE_BUCKETS = exponential(1, 2, 14)  # 1 .. 8192
QUEUING_BUCKETS = exponential(100, 1.2, 52)  # us, ~1 second


def _number(value: float) -> str:
    return f"{value:.6g}"


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> list[str]:
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return [f'{n}="{v}"' for n, v in zip(names, escaped)]


@dataclass
class Family:
    """One metric: a counter, or a histogram when it has bucket limits; a cell per label values."""

    path: str  # TF's name, e.g. /tensorflow/serving/request_count
    labels: tuple[str, ...] = ()
    buckets: list[float] | None = None
    cells: dict[tuple[str, ...], list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return re.sub(r"[^a-zA-Z0-9_]", ":", self.path)

    def add(self, value: float = 1, *labels: str) -> None:
        with self.lock:
            if self.buckets is None:
                cell = self.cells.setdefault(labels, [0])
                cell[0] += value
                return
            cell = self.cells.setdefault(labels, [0.0] * (len(self.buckets) + 2))
            cell[bisect.bisect_right(self.buckets, value)] += 1
            cell[-1] += value  # the sum

    def lines(self) -> list[str]:
        kind = "counter" if self.buckets is None else "histogram"
        lines = [f"# TYPE {self.name} {kind}"]
        with self.lock:
            for labels, cell in sorted(self.cells.items()):
                pairs = _labels(self.labels, labels)
                if self.buckets is None:
                    lines.append(f"{self.name}{{{','.join(pairs)}}} {int(cell[0])}")
                    continue
                total = 0
                for limit, count in zip([*map(_number, self.buckets), "+Inf"], cell[:-1]):
                    total += int(count)
                    bucket = ",".join([*pairs, f'le="{limit}"'])
                    lines.append(f"{self.name}_bucket{{{bucket}}} {total}")
                lines.append(f"{self.name}_sum{{{','.join(pairs)}}} {_number(cell[-1])}")
                lines.append(f"{self.name}_count{{{','.join(pairs)}}} {total}")
        return lines


class BatchingMetrics:
    def __init__(self) -> None:
        base = PREFIX + "batching_session/"
        self.input_batch_size = Family(base + "input_batch_size", (), SIZE_BUCKETS)
        self.processed_batch_size = Family(base + "processed_batch_size", (), SIZE_BUCKETS)
        self.padding_size = Family(base + "padding_size", ("execution_batch_size",), SIZE_BUCKETS)
        self.queuing_latency = Family(base + "queuing_latency", ("thread_pool_name",), QUEUING_BUCKETS)
        self.wrapped_run_count = Family(base + "wrapped_run_count")

    def families(self) -> list[Family]:
        return [self.input_batch_size, self.processed_batch_size, self.padding_size, self.queuing_latency,
                self.wrapped_run_count]


class Metrics:
    def __init__(self, batching: bool = False) -> None:
        self.request_count = Family(PREFIX + "request_count", ("model_name", "status"))
        self.request_latency = Family(PREFIX + "request_latency", ("model_name", "API", "entrypoint"),
                                      LATENCY_BUCKETS)
        self.runtime_latency = Family(PREFIX + "runtime_latency", ("model_name", "API", "runtime"),
                                      LATENCY_BUCKETS)
        self.batching = BatchingMetrics() if batching else None

    def request(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """One Predict (or REST) request: counted with its status; its latency only if it succeeded."""
        self.request_count.add(1, model, status)
        if status == "OK":
            self.request_latency.add(seconds * 1e6, model, api, entrypoint)

    def render(self) -> str:
        families = [self.request_count, self.request_latency, self.runtime_latency]
        families += self.batching.families() if self.batching else []
        return "\n".join(line for f in sorted(families, key=lambda f: f.path) for line in f.lines()) + "\n"
