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
        """Replicas on this worker's devices."""
        return self.replicas if self.workers == 1 else len(self.strategy.extended.worker_devices)

    def describe(self) -> str:
        if self.replicas == 1:
            return "one device"
        return f"{self.replicas} replicas on {self.workers} worker(s) ({type(self.strategy).__name__})"


def cluster_from_environment() -> Cluster:
    """The strategy for this process, from TF_CONFIG and the visible GPUs."""
    config = os.environ.get("TF_CONFIG")
    if config:
        workers, index = _task(config)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        cluster = Cluster(strategy, index, workers, index == 0)
        if cluster.local_replicas * workers != cluster.replicas:
            raise DataError(f"worker {index} has {cluster.local_replicas} device(s) of the cluster's {cluster.replicas}:"
                            " every worker needs as many GPUs (each reads an equal share of the batch)")
        return cluster
    gpus = tf.config.list_logical_devices("GPU")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    return Cluster(strategy, 0, 1, True)


def _task(config: str) -> tuple[int, int]:
    """(workers, this worker's index) from TF_CONFIG: chief and worker tasks only, a list of hosts each."""
    usage = ('set it as {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}')
    try:
        spec = json.loads(config)
        tasks, task = spec["cluster"], spec["task"]
        hosts = {kind: tasks.get(kind, []) for kind in ("chief", "worker")}
        if set(tasks) - set(hosts) or not all(isinstance(h, list) for h in hosts.values()):
            raise ValueError("only chief and worker tasks, each a list of host:port")
        chiefs, index = len(hosts["chief"]), int(task["index"])
        if task["type"] not in hosts or not 0 <= index < len(hosts[task["type"]]):
            raise ValueError(f"task {task['type']} {index} is not in the cluster")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"TF_CONFIG is not a cluster spec ({err}); {usage}") from None
    return chiefs + len(hosts["worker"]), index + (chiefs if task["type"] == "worker" else 0)
