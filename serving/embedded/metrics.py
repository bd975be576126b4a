"""Prometheus metrics under TF Serving's names, rendered in the text exposition format.

Written here rather than with prometheus_client, whose counters always gain a `_total` suffix: dashboards
built for TF Serving query `:tensorflow:serving:request_count` exactly.
"""
from __future__ import annotations

import threading
from collections import Counter, defaultdict

COUNT = ":tensorflow:serving:request_count"
LATENCY = ":tensorflow:serving:request_latency"
BUCKETS_US = [10 * 1.8 ** i for i in range(33)]  # exponential, 10 us .. ~2.5e9 us, as TF Serving's


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._hist: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0] * (len(BUCKETS_US) + 2))

    def record(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        micros = seconds * 1e6
        with self._lock:
            self._counts[(model, status)] += 1
            hist = self._hist[(model, api, entrypoint)]
            for i, bound in enumerate(BUCKETS_US):
                if micros <= bound:
                    hist[i] += 1
            hist[-2] += 1  # count (+Inf)
            hist[-1] += micros  # sum

    def render(self) -> str:
        lines = [f"# TYPE {COUNT} counter"]
        with self._lock:
            for (model, status), n in sorted(self._counts.items()):
                lines.append(f"{COUNT}{{{_labels(model_name=model, status=status)}}} {n}")
            lines.append(f"# TYPE {LATENCY} histogram")
            for (model, api, entrypoint), hist in sorted(self._hist.items()):
                labels = _labels(model_name=model, API=api, entrypoint=entrypoint)
                for bound, n in zip(BUCKETS_US, hist):
                    lines.append(f'{LATENCY}_bucket{{{labels},le="{bound:.6g}"}} {n:.0f}')
                lines.append(f'{LATENCY}_bucket{{{labels},le="+Inf"}} {hist[-2]:.0f}')
                lines.append(f"{LATENCY}_sum{{{labels}}} {hist[-1]:.0f}")
                lines.append(f"{LATENCY}_count{{{labels}}} {hist[-2]:.0f}")
        return "\n".join(lines) + "\n"
