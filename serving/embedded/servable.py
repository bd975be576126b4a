"""One loaded model version: a TF1 session over the SavedModel, as TF Serving's SavedModelBundle is.

Predict follows TF Serving's order of checks (signature, input count, input aliases and parsing, output
filter, dtypes) and messages, so clients see the same errors from this server as from the real one. The
session run goes through the batch scheduler when batching is on, and its time is the runtime latency.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from s3d_retrieval.client.transport.tensors import dtype_name, to_numpy, to_proto
from s3d_retrieval.export.warmup import WARMUP, read_warmup
from s3d_retrieval.serving.embedded.batching import BatchScheduler
from s3d_retrieval.serving.embedded.errors import ServingError, from_tf, invalid
from s3d_retrieval.serving.embedded.metrics import Metrics

DEFAULT_KEY = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
MAX_WARMUP_RECORDS = 1000


def _keys(keys) -> str:
    return ",".join(sorted(keys))


@dataclass
class Runtime:
    """What every loaded version shares."""

    metrics: Metrics
    scheduler: BatchScheduler | None = None  # None: each request runs as it comes
    tensor_content: bool = False  # answer in tensor_content instead of typed fields


class Servable:
    """A model version ready to run; counts requests in flight so unloading can wait for them."""

    def __init__(self, name: str, version: int, path: Path, runtime: Runtime):
        self.name, self.version, self.path = name, version, path
        self.runtime = runtime
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        meta_graph = tf.compat.v1.saved_model.loader.load(self.session, [tf.saved_model.SERVING], str(path))
        self.signatures = dict(meta_graph.signature_def)
        self._in_flight = 0
        self._idle = threading.Condition()
        self.warmup()

    def warmup(self) -> int:
        """Replay `assets.extra/tf_serving_warmup_requests`; any failing record fails the load."""
        path = self.path / WARMUP
        if not path.is_file():
            return 0
        count = 0
        for log in itertools.islice(read_warmup(path), MAX_WARMUP_RECORDS):
            if log.HasField("predict_log"):
                self.predict(log.predict_log.request)
            count += 1
        return count

    def __enter__(self) -> Servable:
        with self._idle:
            self._in_flight += 1
            self._idle.notify_all()
        return self

    def __exit__(self, *exc) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def close(self) -> None:
        """Wait for requests in flight, then free the session."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)
        self.session.close()

    def signature(self, name: str):
        key = name or DEFAULT_KEY
        if key not in self.signatures:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        return key, self.signatures[key]

    def _run(self, fetches: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(fetches, feeds)
        except tf.errors.OpError as err:
            raise from_tf(err) from None

    def predict(self, request: predict_pb2.PredictRequest, deadline: float | None = None) -> predict_pb2.PredictResponse:
        key, sig = self.signature(request.model_spec.signature_name)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.signature_name = key
        response.model_spec.version.value = self.version
        sent, wanted = set(request.inputs), set(sig.inputs)
        if len(sent) != len(wanted):
            raise invalid(f"input size does not match signature: {len(sent)}!={len(wanted)} len({{{_keys(sent)}}}) "
                          f"!= len({{{_keys(wanted)}}}). Sent extra: {{{_keys(sent - wanted)}}}. "
                          f"Missing but required: {{{_keys(wanted - sent)}}}.")
        feeds: dict[str, np.ndarray] = {}
        dtypes = []
        for alias in sorted(wanted):
            info = sig.inputs[alias]
            if alias not in request.inputs:
                raise invalid(f"Signature input alias: {alias}(feed name: {info.name}) not found in request and no "
                              f"default value provided. Inputs expected to be in the request {{{_keys(sent)}}}, "
                              f"or default input alias set: ")
            value = to_numpy(request.inputs[alias])
            if value is None:
                raise invalid(f"tensor parsing error: {alias}")
            feeds[info.name] = value
            dtypes.append((info.dtype, request.inputs[alias].dtype))
        aliases = list(request.output_filter) or sorted(sig.outputs)
        for i, alias in enumerate(aliases):
            if alias not in sig.outputs:
                raise invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be in the "
                              f"set {{{_keys(sig.outputs)}}}.")
            if alias in aliases[:i]:
                raise invalid(f"duplicate output tensor alias: {alias}")
        for i, (expected, got) in enumerate(dtypes):  # the session would coerce; TF Serving does not
            if expected != got:
                raise invalid(f"Expects arg[{i}] to be {dtype_name(expected)} but {dtype_name(got)} is provided")
        fetches = [sig.outputs[a].name for a in aliases]
        start = time.perf_counter()
        scheduler = self.runtime.scheduler
        outputs = (scheduler.run(self, self._run, fetches, feeds, deadline) if scheduler
                   else self._run(fetches, feeds))
        self.runtime.metrics.runtime_latency.add((time.perf_counter() - start) * 1e6, request.model_spec.name,
                                                 "Predict", "TF1")
        for alias, value in zip(aliases, outputs):
            to_proto(value, tensor_content=self.runtime.tensor_content, into=response.outputs[alias])
        return response
