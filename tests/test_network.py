"""The S3D MIL-NCE network itself: sizes, shapes, layout details, tokeniser and loss."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import tensorflow as tf

from s3d_retrieval.model.config import SIZES
from s3d_retrieval.model.layers import BatchNorm
from s3d_retrieval.model.loss import milnce_loss
from s3d_retrieval.model.network import Network, learnable_parameters
from s3d_retrieval.model.s3d import VideoTower, space_to_depth
from s3d_retrieval.model.text import TextTower, vocabulary_table
from s3d_retrieval.model.vocab import standin_vocabulary
from s3d_retrieval.model.weights import standin_weights

TINY = SIZES["tiny"]


@pytest.fixture(scope="module")
def tiny_net() -> Network:
    net = Network(TINY, vocabulary_table(words=standin_vocabulary(TINY.vocab_size)))
    standin_weights(net, seed=3)
    return net


def test_full_network_has_the_released_parameter_counts():
    net = Network(SIZES["full"], vocabulary_table(words=["a"]))
    assert learnable_parameters(net.video) == 9_670_800
    assert learnable_parameters(net.video) - learnable_parameters(net.video.fc) == 9_146_000
    assert learnable_parameters(net.text) == 21_540_536
    assert learnable_parameters(net) == 31_211_336
    assert sum(isinstance(m, BatchNorm) for m in net.video.submodules) == 76
    assert net.video.blocks[-1][1].channels == 1024


@pytest.mark.parametrize("t,h,w", [(2, 32, 32), (8, 64, 96), (6, 96, 64), (16, 32, 160)])
def test_video_tower_downsamples_8x_in_time_and_32x_in_space(tiny_net, t, h, w):
    features = tiny_net.video.features(tf.random.uniform([1, t, h, w, 3]))
    assert features.shape[1:4] == (math.ceil(t / 8), math.ceil(h / 32), math.ceil(w / 32))
    out = tiny_net.video(tf.random.uniform([2, t, h, w, 3]))
    assert out["video_embedding"].shape == (2, 512)
    assert out["mixed_5c"].shape == (2, TINY.channels(1024))


def test_space_to_depth_orders_channels_like_the_pytorch_port():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 6, 8, 3)).astype(np.float32)  # B,T,H,W,C
    # The port works channels-first: view(B,C,T/2,2,H/2,2,W/2,2).permute(0,3,5,7,1,2,4,6) -> (B, 8C, ...).
    cf = x.transpose(0, 4, 1, 2, 3).reshape(2, 3, 2, 2, 3, 2, 4, 2)
    port = cf.transpose(0, 3, 5, 7, 1, 2, 4, 6).reshape(2, 24, 2, 3, 4)
    np.testing.assert_array_equal(space_to_depth(tf.constant(x)).numpy(), port.transpose(0, 2, 3, 4, 1))


def port_tokenize(sentence: str, vocabulary: list[str], max_words: int = 16) -> list[int]:
    """The PyTorch port's reference tokeniser, written out in Python."""
    ids = {word: i for i, word in enumerate(vocabulary, start=1)}
    known = [ids[w] for w in re.findall(r"[\w']+", sentence.lower()) if w in ids]
    return (known + [0] * max_words)[:max_words]


def test_in_graph_tokeniser_matches_the_port(tiny_net):
    vocabulary = standin_vocabulary(TINY.vocab_size)
    sentences = ["Playing Guitar!", "a man's dog, RUNNING... on-the beach", "", "zzz unknown qqq",
                 "  tabs\tand\nnewlines  ", " ".join(vocabulary[:40]), "caf\u00e9 water\u00b7fall don't"]
    got = tiny_net.text.tokenize(tf.constant(sentences)).numpy()
    assert got.dtype == np.int32
    assert got.tolist() == [port_tokenize(s, vocabulary) for s in sentences]


def test_text_embedding_ignores_case_and_punctuation(tiny_net):
    emb = tiny_net.text(tf.constant(["Playing Guitar!", "playing guitar", "playing piano"]))["text_embedding"]
    np.testing.assert_array_equal(emb[0], emb[1])
    assert np.abs(emb[0] - emb[2]).max() > 1e-3


def test_batchnorm_modes_differ_and_training_updates_moving_statistics(tiny_net):
    video = tf.random.stateless_uniform([2, 8, 64, 64, 3], seed=[1, 2])
    inference = tiny_net.video(video)["video_embedding"]
    assert np.abs(inference - tiny_net.video(video)["video_embedding"]).max() == 0  # inference is pure
    fresh = VideoTower(TINY)
    for src, dst in zip(tiny_net.video.variables, fresh.variables):
        dst.assign(src)
    before = fresh.conv1.bn.moving_mean.numpy()
    training = fresh(video, training=True)["video_embedding"]
    assert np.abs(training - inference).max() > 1e-2
    assert np.abs(fresh.conv1.bn.moving_mean.numpy() - before).max() > 0


def test_stand_in_weights_depend_only_on_seed_and_give_input_dependent_outputs():
    nets = [Network(TINY, vocabulary_table(words=standin_vocabulary(TINY.vocab_size))) for _ in range(3)]
    a, b, c = (standin_weights(net, seed) for net, seed in zip(nets, (5, 5, 6)))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    videos = tf.random.stateless_uniform([3, 8, 64, 64, 3], seed=[0, 1])
    emb = nets[0].video(videos)["video_embedding"].numpy()
    spread = np.abs(emb - emb.mean(axis=0)).max()
    assert np.isfinite(emb).all() and spread > 1e-2 * np.abs(emb).max()


def test_milnce_loss_matches_its_definition():
    rng = np.random.default_rng(1)
    batch, bag, dim = 4, 3, 8
    video = rng.normal(size=(batch, dim)).astype(np.float32)
    text = rng.normal(size=(batch, bag, dim)).astype(np.float32)
    expected = []
    for i in range(batch):
        positives = [video[i] @ text[i, p] for p in range(bag)]
        negatives = [video[i] @ text[j, p] for j in range(batch) if j != i for p in range(bag)]
        negatives += [video[j] @ text[i, p] for j in range(batch) if j != i for p in range(bag)]
        pos = np.exp(positives).sum()
        expected.append(-np.log(pos / (pos + np.exp(negatives).sum())))
    got = milnce_loss(tf.constant(video), tf.constant(text)).numpy()
    assert got == pytest.approx(np.mean(expected), rel=1e-5)


def test_text_tower_reads_a_vocabulary_file(tmp_path):
    words = ["playing", "guitar"]
    path = tmp_path / "vocab.tsv"
    path.write_text("playing\t1\nguitar\t2\n")
    tower = TextTower(TINY, vocabulary_table(path=str(path)))
    assert tower.tokenize(tf.constant(["Guitar playing drums"])).numpy()[0, :3].tolist() == [2, 1, 0]
    assert port_tokenize("Guitar playing drums", words)[:3] == [2, 1, 0]
