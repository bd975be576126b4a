"""The embedded server where dashboards, probes and load can tell it from TF Serving: metrics semantics,
server-side batching, grpc.health.v1 and version load retries."""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from s3d_retrieval.client.defaults import MODEL_NAME
from s3d_retrieval.client.transport.session import Options, Session
from s3d_retrieval.export.warmup import WARMUP, read_warmup
from s3d_retrieval.serving.config import parse_batching
from s3d_retrieval.serving.embedded.batching import BatchingOptions, BatchScheduler
from s3d_retrieval.serving.embedded.errors import ServingError
from s3d_retrieval.serving.embedded.metrics import Metrics
from tests.conftest import start_server
from tests.test_serving import Client, State, clip, poll_status, rest, value

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def metric_lines(server, name: str) -> dict[str, str]:
    """The page's lines of one metric family: series (name and labels) -> value."""
    code, body = rest(server, "/monitoring/prometheus/metrics")
    assert code == 200
    return {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in body.splitlines()
            if line.startswith(name) and not line.startswith("#")}


def test_metrics_follow_tf_servings_rules(model_dir):
    server = start_server(model_dir)
    try:
        client, words = Client(server.port), {"words": np.array([b"a dog"], object)}
        client.predict("text", words)
        client.predict("text", words)
        with pytest.raises(grpc.RpcError):
            client.predict("nope", words)  # FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError):
            client.predict("text", words, model="")  # no model: NOT_FOUND under model_name=""
        client.status()
        client.status()  # GetModelStatus and GetModelMetadata are never counted
        rest(server, f"/v1/models/{MODEL_NAME}/metadata")
        assert rest(server, f"/v1/models/{MODEL_NAME}:predict", {"signature_name": "text", "instances": ["a"]})[0] == 200
        assert rest(server, f"/v1/models/{MODEL_NAME}")[0] == 200  # REST status: counted, API=""
        assert rest(server, f"/v1/models/{MODEL_NAME}:predict", {"signature_name": "nope", "instances": ["a"]})[0] == 400
        assert rest(server, "/v1/models/nope")[0] == 404
        assert rest(server, "/v1/oops", {})[0] == 400  # malformed, under /v1/: INVALID_ARGUMENT, no model

        count = ":tensorflow:serving:request_count"
        assert metric_lines(server, count) == {
            f'{count}{{model_name="",status="INVALID_ARGUMENT"}}': "1",
            f'{count}{{model_name="",status="NOT_FOUND"}}': "1",
            f'{count}{{model_name="nope",status="NOT_FOUND"}}': "1",
            f'{count}{{model_name="{MODEL_NAME}",status="FAILED_PRECONDITION"}}': "2",
            f'{count}{{model_name="{MODEL_NAME}",status="OK"}}': "5",  # 2 gRPC + 3 REST (metadata, predict, status)
        }
        latency = ":tensorflow:serving:request_latency"
        counts = {k: v for k, v in metric_lines(server, latency).items() if k.startswith(latency + "_count")}
        assert counts == {
            f'{latency}_count{{model_name="{MODEL_NAME}",API="",entrypoint="REST"}}': "2",
            f'{latency}_count{{model_name="{MODEL_NAME}",API="Predict",entrypoint="GRPC"}}': "2",
            f'{latency}_count{{model_name="{MODEL_NAME}",API="predict",entrypoint="REST"}}': "1",
        }
        grpc_buckets = [(re.search(r'le="([^"]+)"', k)[1], int(v)) for k, v in metric_lines(server, latency).items()
                        if "_bucket" in k and 'entrypoint="GRPC"' in k]
        assert [le for le, _ in grpc_buckets[:5]] == ["10", "18", "32.4", "58.32", "104.976"]  # TF's limits
        assert len(grpc_buckets) == 34 and grpc_buckets[-1] == ("+Inf", 2)
        assert [n for _, n in grpc_buckets] == sorted(n for _, n in grpc_buckets)  # cumulative
        runtime = ":tensorflow:serving:runtime_latency"
        warmups = sum(1 for _ in read_warmup(model_dir / "1" / WARMUP))
        assert metric_lines(server, runtime)[f'{runtime}_count{{model_name="{MODEL_NAME}",API="Predict",runtime="TF1"}}'] \
            == str(warmups + 3)  # warmup replays and the successful predicts
        assert not metric_lines(server, ":tensorflow:serving:batching_session")
    finally:
        server.stop(grace=5)


# --- batching ------------------------------------------------------------------------------------------


class Plug:
    """A fake session run that records what it was given; the first call blocks until released."""

    def __init__(self):
        self.entered, self.release, self.calls = threading.Event(), threading.Event(), []

    def __call__(self, fetches, feeds):
        self.calls.append({k: v.copy() for k, v in feeds.items()})
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(timeout=60)
        return [feeds["x"] * 10]


def queued(scheduler: BatchScheduler) -> int:
    return sum(len(b.tasks) for q in scheduler._queues.values() for b in q)


def wait_queued(scheduler: BatchScheduler, count: int) -> None:
    with scheduler._cond:
        assert scheduler._cond.wait_for(lambda: queued(scheduler) == count, timeout=60)


@pytest.fixture()
def plugged():
    """A scheduler with one batch thread held by a first request, so the queue can be filled at will."""
    schedulers = []

    def make(**options) -> tuple[BatchScheduler, Plug, ThreadPoolExecutor, Metrics]:
        metrics = Metrics(batching=True)
        scheduler = BatchScheduler(BatchingOptions(num_batch_threads=1, **options), metrics)
        plug, pool = Plug(), ThreadPoolExecutor(8)
        schedulers.append((scheduler, plug, pool))
        pool.submit(scheduler.run, "model", plug, ["y"], {"x": np.zeros((1, 3))})
        assert plug.entered.wait(timeout=60)
        return scheduler, plug, pool, metrics

    yield make
    for scheduler, plug, pool in schedulers:
        plug.release.set()
        pool.shutdown()
        scheduler.stop()


def test_a_batch_is_padded_to_an_allowed_size_and_split_back(plugged):
    scheduler, plug, pool, metrics = plugged(max_batch_size=4, allowed_batch_sizes=(2, 4), batch_timeout_micros=0)
    a = pool.submit(scheduler.run, "model", plug, ["y"], {"x": np.array([[1.0, 1, 1]])})
    wait_queued(scheduler, 1)
    b = pool.submit(scheduler.run, "model", plug, ["y"], {"x": np.array([[2.0, 2, 2], [3, 3, 3]])})
    wait_queued(scheduler, 2)
    plug.release.set()
    np.testing.assert_array_equal(a.result(timeout=60)[0], [[10, 10, 10]])
    np.testing.assert_array_equal(b.result(timeout=60)[0], [[20, 20, 20], [30, 30, 30]])
    merged = plug.calls[1]["x"]  # the first request's 1 row went alone; then a and b together
    np.testing.assert_array_equal(merged, [[1, 1, 1], [2, 2, 2], [3, 3, 3], [2, 2, 2]])  # padded: b's first row
    lines = "\n".join(metrics.batching.padding_size.lines() + metrics.batching.processed_batch_size.lines())
    assert ':tensorflow:serving:batching_session:padding_size_count{execution_batch_size="4"} 1' in lines
    assert ':tensorflow:serving:batching_session:padding_size_sum{execution_batch_size="2"} 1' in lines
    assert ":tensorflow:serving:batching_session:processed_batch_size_sum{} 6" in lines


def test_a_full_queue_answers_unavailable(plugged):
    scheduler, plug, pool, _ = plugged(max_batch_size=1, max_enqueued_batches=1)
    waiting = pool.submit(scheduler.run, "model", plug, ["y"], {"x": np.ones((1, 3))})
    wait_queued(scheduler, 1)
    with pytest.raises(ServingError) as refused:
        scheduler.run("model", plug, ["y"], {"x": np.ones((1, 3))})
    assert (refused.value.code, refused.value.message) == (
        grpc.StatusCode.UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full")
    with pytest.raises(ServingError, match="Task size 2 is larger than maximum input batch size 1"):
        scheduler.run("model", plug, ["y"], {"x": np.ones((2, 3))})
    plug.release.set()
    np.testing.assert_array_equal(waiting.result(timeout=60)[0], np.full((1, 3), 10.0))


def test_different_shapes_are_never_merged_and_late_requests_are_not_run(plugged):
    scheduler, plug, pool, _ = plugged(max_batch_size=8)
    narrow = pool.submit(scheduler.run, "model", plug, ["y"], {"x": np.ones((1, 3))})
    wide = pool.submit(scheduler.run, "model", plug, ["y"], {"x": np.ones((1, 5))})
    late = pool.submit(scheduler.run, "model", plug, ["y"], {"x": np.ones((1, 7))}, time.monotonic() - 1)
    wait_queued(scheduler, 3)
    plug.release.set()
    assert narrow.result(timeout=60)[0].shape == (1, 3) and wide.result(timeout=60)[0].shape == (1, 5)
    with pytest.raises(ServingError) as expired:
        late.result(timeout=60)
    assert (expired.value.code, expired.value.message) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "Run() timeout exceeded while waiting in batching queue")
    assert sorted(call["x"].shape for call in plug.calls[1:]) == [(1, 3), (1, 5)]  # two runs, the late one none


def test_the_server_merges_concurrent_single_window_requests(model_dir, server):
    batching = BatchingOptions(max_batch_size=6, batch_timeout_micros=1_500_000, num_batch_threads=2)
    batched = start_server(model_dir, batching=batching)
    try:
        client, alone = Client(batched.port), Client(server.port)  # `server` does not batch
        clips = [clip(t=8, size=64, seed=i) for i in range(6)] + [clip(t=8, size=32, seed=i) for i in range(6)]
        with ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(lambda c: client.predict("video_uint8", {"frames": c}, timeout=120), clips))
        for frames, reply in zip(clips, replies):
            expected = value(alone.predict("video_uint8", {"frames": frames}), "video_embedding")
            np.testing.assert_allclose(value(reply, "video_embedding"), expected, atol=1e-5)
        name = ":tensorflow:serving:batching_session:processed_batch_size"
        warmup_sizes = [next(iter(log.predict_log.request.inputs.values())).tensor_shape.dim[0].size
                        for log in read_warmup(model_dir / "1" / WARMUP)]  # each replayed alone at load
        warmups = len(warmup_sizes)
        lines = metric_lines(batched, name)
        assert lines[f"{name}_count{{}}"] == str(warmups + 2)  # then two batches of 6, one per shape
        assert lines[f'{name}_bucket{{le="4"}}'] == str(warmups)
        assert lines[f"{name}_sum{{}}"] == str(sum(warmup_sizes) + 12)
        runs = metric_lines(batched, ":tensorflow:serving:batching_session:wrapped_run_count")
        assert runs == {":tensorflow:serving:batching_session:wrapped_run_count{}": str(warmups + 2)}
        sentences = [f"sentence {i}" for i in range(40)]  # more than a batch: the client splits them
        with Session(Options(address=f"127.0.0.1:{batched.port}", sentences_per_request=6)) as over, \
                Session(Options(address=f"127.0.0.1:{server.port}", sentences_per_request=40)) as direct:
            np.testing.assert_allclose(over.embed_text(sentences), direct.embed_text(sentences), atol=1e-5)
    finally:
        batched.stop(grace=5)


def test_the_clients_requests_fit_the_shipped_batching_config():
    limit = parse_batching().max_batch_size.value
    assert Options().windows_per_request <= limit and Options().sentences_per_request <= limit


# --- health and load retries ---------------------------------------------------------------------------


def check(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def test_health_names_tf_servings_services_and_the_model(server):
    assert [check(server.port, s) for s in ("", MODEL_NAME, "ModelService", "PredictionService")] == [SERVING] * 4
    with pytest.raises(grpc.RpcError) as unknown:
        check(server.port, "nope")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


class Watch:
    """grpc.health.v1 Watch of one service in a thread: every status heard, until the server goes."""

    def __init__(self, port: int, service: str = ""):
        self.heard: list[int] = []
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stream = health_pb2_grpc.HealthStub(self.channel).Watch(health_pb2.HealthCheckRequest(service=service),
                                                                timeout=900)

        def listen():
            try:
                self.heard.extend(reply.status for reply in stream)
            except grpc.RpcError:  # the stream ends when the server goes
                pass

        self.thread = threading.Thread(target=listen)
        self.thread.start()

    def finish(self) -> list[int]:
        self.thread.join(timeout=60)
        self.channel.close()
        return self.heard


def publish_broken_version_from(good, base, number: int) -> None:
    shutil.copytree(good, base / ".staged")
    (base / ".staged" / "saved_model.pb").write_bytes(b"not a saved model")
    (base / ".staged").rename(base / str(number))


class Retrying(logging.Handler):
    """Runs `repair` when the first load attempt has failed, before the retry's wait begins."""

    def __init__(self, repair):
        super().__init__()
        self.seen, self.repair = threading.Event(), repair

    def emit(self, record):
        if "retrying in" in record.getMessage() and not self.seen.is_set():
            self.repair()
            self.seen.set()


def test_a_failed_load_is_retried_and_health_follows_the_model(model_dir, tmp_path):
    from s3d_retrieval.serving.embedded.manager import LoadRetries

    base = tmp_path / MODEL_NAME
    base.mkdir()
    publish_broken_version_from(model_dir / "1", base, 2)  # the only version: the server starts with nothing
    server = start_server(base, load_retries=LoadRetries(0, 0))
    try:
        client = Client(server.port)
        assert client.status().model_version_status[0].state == State.END
        assert (check(server.port, ""), check(server.port, MODEL_NAME)) == (NOT_SERVING, NOT_SERVING)
        assert check(server.port, "PredictionService") == SERVING  # TF Serving's own names: up once ports open
    finally:
        server.stop(grace=5)

    def repair() -> None:  # written whole, then renamed: a retry never reads half a file
        shutil.copy(model_dir / "1" / "saved_model.pb", base / "3" / "saved_model.pb.tmp")
        os.replace(base / "3" / "saved_model.pb.tmp", base / "3" / "saved_model.pb")

    handler = Retrying(repair)
    logging.getLogger("serving").addHandler(handler)
    shutil.rmtree(base / "2")
    publish_broken_version_from(model_dir / "1", base, 3)
    try:
        starting = threading.Thread(target=lambda: started.append(
            start_server(base, load_retries=LoadRetries(3, 2.0))))
        started: list = []
        starting.start()
        assert handler.seen.wait(timeout=120)  # the first attempt failed and the version was fixed
        starting.join(timeout=120)
        statuses = poll_status(Client(started[0].port), lambda s: s[3].state == State.AVAILABLE, 60)
        assert statuses[3].state == State.AVAILABLE and statuses[3].status.error_code == 0
        assert check(started[0].port, "") == SERVING
    finally:
        logging.getLogger("serving").removeHandler(handler)
        if started:
            started[0].stop(grace=5)
