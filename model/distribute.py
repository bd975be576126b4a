"""Which devices and machines a training run spans, chosen the standard tf.distribute way.

- `TF_CONFIG` naming a cluster: `MultiWorkerMirroredStrategy`, every worker running the same command; worker 0
  (or a task of type "chief") is the chief, which alone writes the run's files.
- otherwise several GPUs: `MirroredStrategy` over them;
- otherwise the default strategy: one device.
Each worker reads only its share of a step's clips; the step itself gathers every replica's embeddings, so the
MIL-NCE negatives are the whole global batch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import tensorflow as tf

from s3d_retrieval.model.narration import DataError


@dataclass(frozen=True)
class Cluster:
    strategy: tf.distribute.Strategy
    worker: int  # this process's index among the workers
    workers: int
    chief: bool

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def local_replicas(self) -> int:
        return self.replicas // self.workers

    def describe(self) -> str:
        if self.replicas == 1:
            return "one device"
        return f"{self.replicas} replicas on {self.workers} worker(s) ({type(self.strategy).__name__})"


def cluster_from_environment() -> Cluster:
    """The strategy for this process, from TF_CONFIG and the visible GPUs."""
    config = os.environ.get("TF_CONFIG")
    if config:
        try:
            spec = json.loads(config)
            tasks = spec["cluster"]
            task = spec["task"]
            workers = len(tasks.get("chief", [])) + len(tasks.get("worker", []))
            index = int(task["index"]) + (len(tasks.get("chief", [])) if task["type"] == "worker" else 0)
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"TF_CONFIG is not a cluster spec ({err}); set it as "
                            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}'
                            ) from None
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Cluster(strategy, index, workers, index == 0)
    gpus = tf.config.list_logical_devices("GPU")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    return Cluster(strategy, 0, 1, True)
