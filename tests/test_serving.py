"""Serving: configs, and the embedded server against the official tensorflow-serving-api stubs."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from s3d_retrieval.client.defaults import FPS, FRAMES, MODEL_NAME, SIZE
from tests.conftest import start_server
from s3d_retrieval.export.pipeline import export_model
from s3d_retrieval.serving import launcher
from s3d_retrieval.serving.config import TF_SERVING_IMAGE, parse_batching, parse_models, parse_monitoring

State = get_model_status_pb2.ModelVersionStatus.State
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class Client:
    def __init__(self, port: int):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, signature="", inputs=None, model=MODEL_NAME, version=None, output_filter=(), timeout=60):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        for key, value in (inputs or {}).items():
            request.inputs[key].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto)
                                         else tf.make_tensor_proto(value))
        request.output_filter.extend(output_filter)
        return self.predict_stub.Predict(request, timeout=timeout)

    def status(self, model=MODEL_NAME):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        return self.model_stub.GetModelStatus(request, timeout=10)


@pytest.fixture(scope="module")
def client(server):
    return Client(server.port)


def clip(t=8, size=64, batch=1, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, t, size, size, 3), dtype=np.uint8)


def value(response, key) -> np.ndarray:
    return tf.make_ndarray(response.outputs[key])


# --- configs -------------------------------------------------------------------------------------------


def test_config_files_parse_as_tf_serving_protos():
    models = parse_models()
    (entry,) = models.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == (MODEL_NAME, f"/models/{MODEL_NAME}", "tensorflow")
    assert entry.model_version_policy.latest.num_versions == 1
    batching = parse_batching()
    assert list(batching.allowed_batch_sizes)[-1] == batching.max_batch_size.value
    assert batching.batch_timeout_micros.value > 0 and batching.num_batch_threads.value >= 1
    monitoring = parse_monitoring().prometheus_config
    assert monitoring.enable and monitoring.path == "/monitoring/prometheus/metrics"


def test_a_broken_batching_file_is_refused(tmp_path):
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_size { value: 16 }\nallowed_batch_sizes: 8\n")
    with pytest.raises(ValueError, match="must increase and end at max_batch_size"):
        parse_batching(bad)
    bad.write_text("max_batch_sise { value: 16 }\n")
    with pytest.raises(text_format.ParseError):
        parse_batching(bad)


def test_launch_commands_use_the_config_files_and_the_pinned_image(tmp_path):
    plan = launcher.Plan(MODEL_NAME, tmp_path / "m", None, 8500, 8501, True, 0.5)
    config = tmp_path / "models.config"
    binary = launcher.binary_command(plan, config)
    assert binary[0] == "tensorflow_model_server" and f"--model_config_file={config}" in binary
    assert "--enable_batching" in binary and "--per_process_gpu_memory_fraction=0.5" in binary
    assert any(f.startswith("--monitoring_config_file=") and f.endswith("monitoring.config") for f in binary)
    docker = launcher.docker_command(plan, config, gpu=True)
    assert f"{TF_SERVING_IMAGE}-gpu" in docker and ["--gpus", "all"] == docker[4:6]
    assert f"{(tmp_path / 'm').resolve()}:/models/{MODEL_NAME}:ro" in docker
    assert f"--model_config_file=/config-local/{config.name}" in docker and f"{tmp_path}:/config-local:ro" in docker
    assert TF_SERVING_IMAGE in launcher.docker_command(plan, config, gpu=False)
    local = launcher.model_server_config(plan)
    assert local.model_config_list.config[0].base_path == str((tmp_path / "m").resolve())


# --- happy paths ---------------------------------------------------------------------------------------


def test_every_signature_answers_like_the_saved_model(client, model_dir):
    local = tf.saved_model.load(str(model_dir / "1"), tags=["serve"]).signatures
    frames = clip(batch=2)
    images = frames.astype(np.float32) / np.float32(255)
    expected = local["video"](images=tf.constant(images))
    for signature, key, data in (("video", "images", images), ("video_uint8", "frames", frames)):
        response = client.predict(signature, {key: data})
        assert response.model_spec.version.value == 1 and response.model_spec.signature_name == signature
        assert response.outputs["video_embedding"].float_val and not response.outputs["video_embedding"].tensor_content
        for out in ("video_embedding", "mixed_5c"):
            np.testing.assert_allclose(value(response, out), expected[out].numpy(), rtol=0, atol=1e-5)
    words = np.array([b"Playing guitar!", b""], dtype=object)
    expected_text = local["text"](words=tf.constant(words))["text_embedding"].numpy()
    for signature in ("text", ""):
        response = client.predict(signature, {"words": words})
        assert response.model_spec.signature_name == (signature or "serving_default")
        np.testing.assert_allclose(value(response, "text_embedding"), expected_text, rtol=0, atol=1e-5)


def test_output_filter_and_a_full_size_clip_over_the_4mib_default(client):
    big = clip(t=32, size=224)  # 4.8 MB as uint8; as float32 19 MB
    response = client.predict("video", {"images": big.astype(np.float32) / 255}, output_filter=["video_embedding"])
    assert list(response.outputs) == ["video_embedding"] and value(response, "video_embedding").shape == (1, 512)


def test_typed_request_values_repeat_the_last_one(client):
    short = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum)
    short.tensor_shape.dim.extend([tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in (1, 2, 32, 32, 3)])
    short.float_val.extend([0.25, 0.5])
    full = np.full((1, 2, 32, 32, 3), 0.5, np.float32)
    full.flat[0] = 0.25
    np.testing.assert_array_equal(value(client.predict("video", {"images": short}), "video_embedding"),
                                  value(client.predict("video", {"images": full}), "video_embedding"))


def test_metadata_and_status(client, server):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL_NAME
    response = client.predict_stub.GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"video", "video_uint8", "text", "serving_default", "preprocessing"}
    settings = client.predict("preprocessing", {"keys": np.array([b"frames", b"fps", b"size", b"nope"], object)})
    assert value(settings, "values").tolist() == [FRAMES, FPS, SIZE, -1]  # no training manifest: the defaults
    assert response.model_spec.version.value == 1
    (status,) = client.status().model_version_status
    assert (status.version, status.state, status.status.error_code) == (1, State.AVAILABLE, 0)


# --- the error contract (reference table) ---------------------------------------------------------------

ERRORS = [
    (dict(model="nope"), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (dict(version=99), grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({MODEL_NAME}, 99)"),
    (dict(signature="nope"), grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
    (dict(signature="text", inputs={"words": np.array([b"a"], object), "extra": np.zeros(1, np.float32)}),
     grpc.StatusCode.INVALID_ARGUMENT, "input size does not match signature: 2!=1 len({extra,words}) != "
                                       "len({words}). Sent extra: {extra}. Missing but required: {}."),
    (dict(signature="text", inputs={}), grpc.StatusCode.INVALID_ARGUMENT,
     "input size does not match signature: 0!=1 len({}) != len({words}). Sent extra: {}. Missing but required: {words}."),
    (dict(signature="text", inputs={"sentences": np.array([b"a"], object)}), grpc.StatusCode.INVALID_ARGUMENT,
     "Signature input alias: words(feed name: words:0) not found in request and no default value provided. "
     "Inputs expected to be in the request {sentences}, or default input alias set: "),
    (dict(signature="video", inputs={"images": np.zeros((1, 2, 32, 32, 3), np.float32)}, output_filter=["nope"]),
     grpc.StatusCode.INVALID_ARGUMENT,
     "output tensor alias not found in signature: nope Outputs expected to be in the set {mixed_5c,video_embedding}."),
    (dict(signature="video", inputs={"images": np.zeros((1, 2, 32, 32, 3), np.float32)},
          output_filter=["mixed_5c", "mixed_5c"]), grpc.StatusCode.INVALID_ARGUMENT,
     "duplicate output tensor alias: mixed_5c"),
    (dict(signature="video", inputs={"images": np.zeros((1, 2, 32, 32, 3), np.float64)}),
     grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float but double is provided"),
    (dict(signature="video_uint8", inputs={"frames": np.zeros((1, 2, 32, 32, 3), np.float32)}),
     grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be uint8 but float is provided"),
]


@pytest.mark.parametrize("call,code,message", ERRORS)
def test_errors_carry_tf_servings_codes_and_messages(client, call, code, message):
    with pytest.raises(grpc.RpcError) as err:
        client.predict(**call)
    assert (err.value.code(), err.value.details()) == (code, message)


def test_missing_model_spec_bad_tensor_content_and_shape_errors(client):
    with pytest.raises(grpc.RpcError) as err:
        client.predict_stub.Predict(predict_pb2.PredictRequest(), timeout=10)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    broken = tf.make_tensor_proto(np.zeros((1, 2, 32, 32, 3), np.float32))
    broken.tensor_content = broken.tensor_content[:-4]
    with pytest.raises(grpc.RpcError) as err:
        client.predict("video", {"images": broken})
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: images")
    with pytest.raises(grpc.RpcError) as err:  # odd T: shapes are not checked up front, the graph refuses it
        client.predict("video", {"images": np.zeros((1, 3, 32, 32, 3), np.float32)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_status_of_an_unknown_model_and_long_messages_are_truncated(client):
    with pytest.raises(grpc.RpcError) as err:
        client.status("nope")
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.NOT_FOUND,
                                                       "Could not find any versions of model nope")
    with pytest.raises(grpc.RpcError) as err:
        client.predict(signature="x" * 2000)
    assert len(err.value.details()) == 1024 + len("...TRUNCATED")
    assert err.value.details().startswith('Serving signature key "xxx') and err.value.details().endswith("...TRUNCATED")


# --- REST and metrics -----------------------------------------------------------------------------------


def rest(server, path, body=None):
    url = f"http://127.0.0.1:{server.rest.port}{path}"
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_rest_predict_status_metadata_and_errors(server, client):
    grpc_text = value(client.predict("text", {"words": np.array([b"playing guitar"], object)}), "text_embedding")
    code, body = rest(server, f"/v1/models/{MODEL_NAME}:predict", {"instances": ["playing guitar"]})
    assert code == 200
    np.testing.assert_allclose(json.loads(body)["predictions"], grpc_text, atol=1e-6)
    code, body = rest(server, f"/v1/models/{MODEL_NAME}/versions/1:predict",
                      {"signature_name": "text", "inputs": {"words": [{"b64": "cGxheWluZyBndWl0YXI="}]}})
    np.testing.assert_allclose(json.loads(body)["outputs"], grpc_text, atol=1e-6)
    code, body = rest(server, f"/v1/models/{MODEL_NAME}:predict",
                      {"signature_name": "video_uint8", "instances": clip(t=2, size=32, batch=2).tolist()})
    predictions = json.loads(body)["predictions"]
    assert code == 200 and len(predictions) == 2 and set(predictions[0]) == {"video_embedding", "mixed_5c"}
    assert rest(server, f"/v1/models/{MODEL_NAME}")[1] == json.dumps({"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    code, body = rest(server, f"/v1/models/{MODEL_NAME}/metadata")
    assert code == 200 and "video_uint8" in json.loads(body)["metadata"]["signature_def"]["signature_def"]
    code, body = rest(server, "/v1/models/nope:predict", {"instances": ["a"]})
    assert (code, json.loads(body)) == (404, {"error": "Servable not found for request: Latest(nope)"})
    code, body = rest(server, f"/v1/models/{MODEL_NAME}:predict", {"signature_name": "nope", "instances": ["a"]})
    assert code == 400 and json.loads(body)["error"] == 'Serving signature key "nope" not found.'


# --- versions, shutdown, load ---------------------------------------------------------------------------


def publish_broken_version(model_dir, number):
    staged = model_dir / f".broken-{number}"
    shutil.copytree(model_dir / "1", staged)
    (staged / "saved_model.pb").write_bytes(b"not a saved model")
    staged.rename(model_dir / str(number))


def poll_status(client: Client, done, seconds: float) -> dict:
    """GetModelStatus until done(statuses by version) holds or the deadline passes; returns the last statuses."""
    deadline = time.monotonic() + seconds
    while True:
        statuses = {s.version: s for s in client.status().model_version_status}
        if done(statuses) or time.monotonic() > deadline:
            return statuses


def test_a_new_version_swaps_in_under_traffic_health_stays_serving_and_a_broken_one_does_not_take_over(standin, tmp_path):
    from tests.test_serving_fidelity import NOT_SERVING, SERVING, Watch

    model_dir = tmp_path / MODEL_NAME
    export_model(str(standin()), model_dir, frames=2, size=32)
    server = start_server(model_dir)
    client = Client(server.port)
    health = Watch(server.port)  # grpc.health.v1 through the swap and the stop
    words = np.array([b"a dog on the beach"], object)
    seen, failures, status_log = [], [], []
    first_reply, swapped = threading.Event(), threading.Event()
    deadline = time.monotonic() + 600  # generous: only a hung swap reaches it, however slow the machine

    def traffic():  # runs until the swap is observed, at whatever rate the machine allows
        while not swapped.is_set() and time.monotonic() < deadline:
            try:
                seen.append(client.predict("text", {"words": words}).model_spec.version.value)
            except grpc.RpcError as err:
                failures.append(err.details())
            first_reply.set()
            states = {s.version: s.state for s in client.status().model_version_status}
            status_log.append(states)
            if states.get(1) == State.END and states.get(2) == State.AVAILABLE:
                swapped.set()

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        assert first_reply.wait(timeout=120), "no reply from version 1"
        export_model(str(standin(seed=1)), model_dir, frames=2, size=32)  # publishes version 2 under traffic
        sender.join()
        assert swapped.is_set(), f"no swap observed; last states {status_log[-3:]}"
        assert failures == []
        assert seen == sorted(seen) and seen[0] == 1 and seen[-1] == 2
        publish_broken_version(model_dir, 3)
        statuses = poll_status(client, lambda s: 3 in s and s[3].state == State.END, 120)
        assert 3 in statuses and statuses[3].state == State.END, "version 3 never reached END"
        assert statuses[3].status.error_code != 0 and statuses[3].status.error_message
        assert statuses[2].state == State.AVAILABLE  # the previous version goes on serving
        assert client.predict("text", {"words": words}).model_spec.version.value == 2
    finally:
        swapped.set()  # stops the traffic if an assertion above failed first
        sender.join()
        server.stop(grace=5)
    assert health.finish() == [SERVING, NOT_SERVING]  # never NOT_SERVING during the swap; NOT_SERVING at stop


def test_stop_lets_requests_in_flight_finish(model_dir):
    server = start_server(model_dir)
    client = Client(server.port)
    servable = server.manager.models[MODEL_NAME].versions[1].servable
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.predict, "video_uint8", {"frames": clip(t=32, size=224, batch=6)})
        with servable._idle:
            assert servable._idle.wait_for(lambda: servable._in_flight > 0, timeout=60)
        server.stop(grace=30)
        assert future.result().outputs["video_embedding"].tensor_shape.dim[0].size == 6


def test_sigterm_stops_the_cli_server_gracefully_and_it_says_only_its_own_lines(model_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("S3D_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    proc = subprocess.Popen([sys.executable, "-m", "s3d_retrieval.serving", "--embedded", "--model-dir", str(model_dir),
                             "--host", "127.0.0.1", "--port", "0", "--rest-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {MODEL_NAME} (embedded server): gRPC 127.0.0.1:"), line
        port = int(line.split("gRPC 127.0.0.1:")[1].split(";")[0].split(",")[0])
        assert Client(port).status().model_version_status[0].state == State.AVAILABLE
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "shutting down" in out
        # no TensorFlow/absl/CUDA start-up lines (I0000 ..., cuInit, "All log messages before absl::...")
        assert err and all(re.match(r"\d{4}-\d\d-\d\d [\d:,]+ serving (INFO|WARNING) ", l) for l in err.splitlines()), err
    finally:
        proc.kill()


def test_bounded_load_eight_clients(server, capsys):
    clients = [Client(server.port) for _ in range(8)]
    words = np.array([b"someone slicing an onion in a kitchen"], object)

    def work(c: Client, i: int) -> list[tuple[str, float]]:
        timings = []
        for n in range(40):
            start = time.perf_counter()
            if n % 10 == 9:
                c.predict("video_uint8", {"frames": clip(seed=i * 100 + n)}, timeout=60)
                timings.append(("video", time.perf_counter() - start))
            else:
                c.predict("text", {"words": words}, timeout=60)
                timings.append(("text", time.perf_counter() - start))
        return timings

    with ThreadPoolExecutor(8) as pool:
        results = [t for ts in pool.map(work, clients, range(8)) for t in ts]  # any RpcError fails the test
    assert len(results) == 320
    with capsys.disabled():
        for kind in ("text", "video"):
            ms = np.array([s for k, s in results if k == kind]) * 1000
            print(f"\nload, 8 clients, {kind}: {len(ms)} requests, p50 {np.percentile(ms, 50):.1f} ms, "
                  f"p99 {np.percentile(ms, 99):.1f} ms", end="")
