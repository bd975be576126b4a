"""The stand-in module behaves like `deepmind/mil-nce/s3d/1` does under `hub.load` (reference §1-§2)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
from tensorflow.core.protobuf import saved_model_pb2

from s3d_retrieval.model.__main__ import main
from s3d_retrieval.model.config import SIZES
from s3d_retrieval.model.hub_format import MODULE_MARKER
from s3d_retrieval.model.network import Network
from s3d_retrieval.model.text import vocabulary_table
from s3d_retrieval.model.vocab import standin_vocabulary
from s3d_retrieval.model.weights import assign, standin_weights

LAYOUTS = [("asset", "resource"), ("asset", "reference"), ("graph", "resource"), ("graph", "reference")]
SENTENCES = ["Playing Guitar!", "playing guitar", "a dog running on the beach", "", "zzz qqq"]


def video(b: int, t: int, h: int, w: int, seed: int = 0) -> tf.Tensor:
    return tf.random.stateless_uniform([b, t, h, w, 3], seed=[seed, 7])


def meta_graphs(path) -> dict[tuple[str, ...], object]:
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    return {tuple(mg.meta_info_def.tags): mg for mg in saved.meta_graphs}


@pytest.mark.parametrize("vocab_layout,variables", LAYOUTS)
def test_hub_load_gives_the_two_signatures_of_the_real_module(standin, vocab_layout, variables):
    module = hub.load(str(standin(vocab_layout, variables)))
    assert sorted(module.signatures) == ["text", "video"]  # no `default`
    vid, txt = module.signatures["video"], module.signatures["text"]
    assert vid.structured_input_signature[1]["images"].dtype == tf.float32
    assert vid.structured_input_signature[1]["images"].shape.as_list() == [None, None, None, None, 3]
    assert txt.structured_input_signature[1]["words"].shape.as_list() == [None]
    assert sorted(vid.structured_outputs) == ["mixed_5c", "video_embedding"]
    clip = video(2, 8, 64, 64)
    np.testing.assert_array_equal(vid(clip)["video_embedding"], vid(images=clip)["video_embedding"])
    emb = txt(words=tf.constant(SENTENCES))["text_embedding"].numpy()
    np.testing.assert_array_equal(emb, txt(tf.constant(SENTENCES))["text_embedding"])
    assert emb.shape == (5, 512)
    np.testing.assert_array_equal(emb[0], emb[1])


@pytest.mark.parametrize("b,t,h,w", [(1, 2, 32, 32), (3, 8, 64, 64), (2, 16, 64, 96)])
def test_video_signature_takes_any_batch_and_even_sizes(standin, b, t, h, w):
    out = hub.load(str(standin())).signatures["video"](video(b, t, h, w))
    assert out["video_embedding"].shape == (b, 512)
    assert out["mixed_5c"].shape == (b, SIZES["tiny"].channels(1024))


@pytest.mark.parametrize("vocab_layout,variables", LAYOUTS)
def test_module_computes_exactly_what_the_eager_network_computes(standin, vocab_layout, variables):
    module = hub.load(str(standin(vocab_layout, variables)))
    config = SIZES["tiny"]
    net = Network(config, vocabulary_table(words=standin_vocabulary(config.vocab_size)))
    standin_weights(net, seed=0)
    clip = video(2, 8, 64, 64, seed=3)
    for key in ("video_embedding", "mixed_5c"):  # graph and eager kernels differ in float32 rounding only
        expected = net.video(clip)[key].numpy()
        np.testing.assert_allclose(module.signatures["video"](clip)[key], expected,
                                   rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))
    np.testing.assert_allclose(module.signatures["text"](tf.constant(SENTENCES))["text_embedding"],
                               net.text(tf.constant(SENTENCES))["text_embedding"], atol=1e-5)


def test_outputs_are_identical_across_two_loads_and_differ_across_seeds(standin):
    clip = video(2, 8, 64, 64)
    a, b = (hub.load(str(standin())).signatures["video"](clip)["video_embedding"] for _ in range(2))
    np.testing.assert_array_equal(a, b)
    other = hub.load(str(standin(seed=1))).signatures["video"](clip)["video_embedding"]
    assert np.abs(a - other).max() > 1e-3


def test_plain_saved_model_load_needs_tags_like_the_real_module(standin):
    path = str(standin())
    with pytest.raises(ValueError, match="requires a `tags=` argument"):
        tf.saved_model.load(path)
    assert sorted(tf.saved_model.load(path, tags=[]).signatures) == ["text", "video"]


def test_train_graph_uses_batch_statistics(standin):
    path = str(standin())
    clip = video(2, 8, 64, 64)
    infer = tf.saved_model.load(path, tags=[]).signatures["video"](clip)["video_embedding"]
    train = tf.saved_model.load(path, tags=["train"]).signatures["video"](clip)["video_embedding"]
    assert np.abs(infer - train).max() > 1e-2
    assert "update_ops" in meta_graphs(standin())[("train",)].collection_def


@pytest.mark.parametrize("vocab_layout,variables", LAYOUTS)
def test_files_and_ops_match_the_layout(standin, vocab_layout, variables):
    path = standin(vocab_layout, variables)
    assert (path / MODULE_MARKER).read_bytes() == b"\x08\x03"  # ModuleDef{format: FORMAT_V3}
    assert (path / "variables" / "variables.index").is_file()
    assert (path / "assets" / "s3d_dict.txt").is_file() == (vocab_layout == "asset")
    graphs = meta_graphs(path)
    assert sorted(graphs) == [(), ("train",)]
    ops = {node.op for node in graphs[()].graph_def.node}
    assert {"Conv3D", "FusedBatchNormV3", "MaxPool3D", "Sigmoid", "StringLower", "StaticRegexReplace",
            "StringSplitV2", "HashTableV2", "LookupTableFindV2"} <= ops
    assert ("VariableV2" in ops) == (variables == "reference")
    assert ("VarHandleOp" in ops) == (variables == "resource")
    assert ("InitializeTableFromTextFileV2" in ops) == (vocab_layout == "asset")
    assert not any(s.method_name for s in graphs[()].signature_def.values())


def test_cli_writes_a_loadable_module_and_refuses_an_existing_folder(tmp_path, capsys):
    out = tmp_path / "module"
    assert main(["standin", str(out), "--size", "tiny", "--vocab", "graph"]) == 0
    assert "wrote tiny stand-in" in capsys.readouterr().out
    assert sorted(hub.load(str(out)).signatures) == ["text", "video"]
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["standin", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["module"]  # no temp folder left behind


def test_assign_rejects_weights_of_another_network():
    tiny = Network(SIZES["tiny"], vocabulary_table(words=["a"]))
    weights = {v.name.split(":")[0]: v.numpy() for v in tiny.variables}
    weights.pop("video/fc/bias")
    with pytest.raises(ValueError, match="missing"):
        assign(tiny, weights)
