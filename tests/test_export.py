"""Export: hub module -> verified TF Serving version (issue: export, proven by parity)."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from s3d_retrieval.export import servable
from s3d_retrieval.client.defaults import FPS, HUB_HANDLE, INPUT_KEYS, MODEL_NAME, SIZE
from s3d_retrieval.export.__main__ import main
from s3d_retrieval.export.pipeline import MANIFEST, export_model
from s3d_retrieval.export.source import ExportError
from s3d_retrieval.export.warmup import WARMUP_FILE, read_warmup
from s3d_retrieval.model.config import SIZES
from s3d_retrieval.model.network import Network
from s3d_retrieval.model.text import vocabulary_table
from s3d_retrieval.model.vocab import standin_vocabulary
from s3d_retrieval.model.weights import standin_weights

LAYOUTS = [("asset", "resource"), ("asset", "reference"), ("graph", "resource"), ("graph", "reference")]
SERVED = {"video", "video_uint8", "text", "serving_default"}  # each has a warmup record
SIGNATURES = SERVED | {"preprocessing"}


@pytest.fixture(scope="module")
def exported(standin, tmp_path_factory):
    """The tiny stand-in exported once, warmed up at small clips to keep the suite fast."""
    return export_model(str(standin()), tmp_path_factory.mktemp("models") / MODEL_NAME, frames=8, size=64)


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def serving_graph(path):
    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    assert len(saved.meta_graphs) == 1
    return saved.meta_graphs[0]


def test_versions_count_up_and_are_never_overwritten(standin, tmp_path, capsys):
    model_dir = tmp_path / "m"
    source = str(standin())
    assert main(["--source", source, "--model-dir", str(model_dir), "--warmup-frames", "2",
                 "--warmup-size", "32"]) == 0
    assert "exported" in capsys.readouterr().out
    assert export_model(source, model_dir, frames=2, size=32).version == 2
    before = files_under(model_dir)
    assert main(["--source", source, "--model-dir", str(model_dir), "--version", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert files_under(model_dir) == before
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2"]  # no staging folder left


@pytest.mark.parametrize("vocab_layout,variables", LAYOUTS)
def test_every_layout_exports_with_parity(standin, tmp_path, vocab_layout, variables):
    source = standin(vocab_layout, variables)
    result = export_model(str(source), tmp_path / "m", frames=2, size=32)
    assert max(result.parity.values()) <= 1e-5
    # Checked again here, independently of the exporter's own check.
    src, dst = hub.load(str(source)).signatures, tf.saved_model.load(str(result.path), tags=["serve"]).signatures
    frames = np.random.default_rng(5).integers(0, 256, (2, 8, 64, 96, 3), dtype=np.uint8)
    images = tf.constant(frames / np.float32(255))
    expected = src["video"](images=images)
    for got in (dst["video"](images=images), dst["video_uint8"](frames=tf.constant(frames))):
        for key in ("video_embedding", "mixed_5c"):
            np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-5)
    words = tf.constant(["Cutting an ONION, slowly.", "", "unknownword"])
    np.testing.assert_allclose(dst["text"](words=words)["text_embedding"],
                               src["text"](words=words)["text_embedding"], rtol=0, atol=1e-5)


def test_signatures_keys_dtypes_and_shapes(exported):
    graph = serving_graph(exported.path)
    assert list(graph.meta_info_def.tags) == ["serve"]
    sigs = graph.signature_def
    assert set(sigs) == SIGNATURES
    assert {s.method_name for s in sigs.values()} == {"tensorflow/serving/predict"}
    dtype = {name: sig.inputs[INPUT_KEYS.get(name, "words")].dtype for name, sig in sigs.items()}
    assert dtype == {"video": types_pb2.DT_FLOAT, "video_uint8": types_pb2.DT_UINT8, "text": types_pb2.DT_STRING,
                     "serving_default": types_pb2.DT_STRING, "preprocessing": types_pb2.DT_STRING}
    for name in ("video", "video_uint8"):
        assert [d.size for d in sigs[name].inputs[INPUT_KEYS[name]].tensor_shape.dim] == [-1, -1, -1, -1, 3]
        assert set(sigs[name].outputs) == {"video_embedding", "mixed_5c"}
        assert [d.size for d in sigs[name].outputs["video_embedding"].tensor_shape.dim] == [-1, 512]
    assert set(sigs["text"].outputs) == set(sigs["serving_default"].outputs) == {"text_embedding"}


def test_every_warmup_record_decodes_and_replays(exported):
    loaded = tf.saved_model.load(str(exported.path), tags=["serve"])
    graph = serving_graph(exported.path)
    logs = list(read_warmup(exported.path / "assets.extra" / WARMUP_FILE))
    assert {log.predict_log.request.model_spec.signature_name for log in logs} == SERVED
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == MODEL_NAME
        sig = graph.signature_def[request.model_spec.signature_name]
        assert set(request.inputs) == set(sig.inputs)
        for key, tensor in request.inputs.items():
            assert tensor.dtype == sig.inputs[key].dtype  # a mismatch would fail TF Serving's whole load
        if request.model_spec.signature_name in ("video", "video_uint8"):
            assert [d.size for d in next(iter(request.inputs.values())).tensor_shape.dim] == [1, 8, 64, 64, 3]
        outputs = loaded.signatures[request.model_spec.signature_name](
            **{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
        assert all(np.isfinite(v.numpy()).all() for v in outputs.values())


def test_manifest_records_source_and_contract(exported, standin):
    manifest = json.loads((exported.path / "assets.extra" / MANIFEST).read_text())
    assert manifest["source"]["handle"] == str(standin())
    assert manifest["source"]["kind"] == "hub-tf1"
    assert manifest["tensorflow"] == tf.__version__
    # a module without a training manifest is taken to want the released model's sampling
    assert (manifest["preprocessing"]["fps"], manifest["preprocessing"]["size"]) == (FPS, SIZE)
    assert manifest["warmup_clip"] == [1, 8, 64, 64, 3]
    assert set(manifest["signatures"]) == SIGNATURES
    assert max(manifest["parity_max_abs_diff"].values()) <= manifest["parity_tolerance"]


def test_offline_default_handle_fails_clearly_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["--model-dir", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot get {HUB_HANDLE}") and "TFHUB_CACHE_DIR" in err and "--source" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "models").exists()


def test_default_handle_loads_offline_from_a_filled_cache(standin, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(standin(), cache / hashlib.sha1(HUB_HANDLE.encode()).hexdigest())
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    assert main(["--model-dir", str(tmp_path / "m"), "--warmup-frames", "2", "--warmup-size", "32"]) == 0
    assert (tmp_path / "m" / "1" / "saved_model.pb").is_file()


def corrupt_pb(path):
    (path / "saved_model.pb").write_bytes(b"\x00garbage" * 100)


def truncate_variables(path):
    data = next((path / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[:1000])


def drop_text_signature(path):
    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    for graph in saved.meta_graphs:
        del graph.signature_def["text"]
    (path / "saved_model.pb").write_bytes(saved.SerializeToString())


@pytest.mark.parametrize("damage,message", [(corrupt_pb, "not a readable SavedModel"),
                                            (truncate_variables, "corrupted"),
                                            (drop_text_signature, "no signature 'text'; it has: video(images")])
def test_a_damaged_source_fails_clearly_and_publishes_nothing(standin, tmp_path, capsys, damage, message):
    source = tmp_path / "source"
    shutil.copytree(standin(), source)
    damage(source)
    model_dir = tmp_path / "models"
    assert main(["--source", str(source), "--model-dir", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not model_dir.exists() or list(model_dir.iterdir()) == []


def test_a_parity_failure_publishes_nothing(standin, tmp_path, monkeypatch):
    monkeypatch.setattr(servable, "UINT8_TO_UNIT", np.arange(256, dtype=np.float32) / 256)
    with pytest.raises(ExportError, match="video_uint8/video_embedding"):
        export_model(str(standin()), tmp_path / "m", frames=2, size=32)
    assert list((tmp_path / "m").iterdir()) == []


def test_a_tf2_saved_model_source_exports_too(tmp_path):
    config = SIZES["tiny"]
    net = Network(config, vocabulary_table(words=standin_vocabulary(config.vocab_size)))
    standin_weights(net, seed=2)
    video = tf.function(net.video.__call__, input_signature=[tf.TensorSpec([None, None, None, None, 3], name="images")])
    text = tf.function(net.text.__call__, input_signature=[tf.TensorSpec([None], tf.string, name="words")])
    tf.saved_model.save(net, str(tmp_path / "tf2"), signatures={"video": video, "text": text})
    result = export_model(str(tmp_path / "tf2"), tmp_path / "m", frames=2, size=32)
    assert max(result.parity.values()) <= 1e-5
    words = tf.constant(["playing guitar"])
    got = tf.saved_model.load(str(result.path), tags=["serve"]).signatures["text"](words=words)["text_embedding"]
    np.testing.assert_allclose(got, net.text(words)["text_embedding"], rtol=0, atol=1e-5)
