"""Weights of a network as a name -> array mapping: seeded stand-in values, assignment, snapshots.

The stand-in's BatchNorm statistics are measured on a forward pass and then perturbed: activations keep a
healthy scale through all 76 BatchNorm layers (so outputs depend on the input), yet inference and training
BatchNorm give visibly different outputs, so a module loaded in the wrong mode is caught.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from s3d_retrieval.model.layers import BatchNorm
from s3d_retrieval.model.network import Network, named_variables
from s3d_retrieval.model.vocab import COMMON_WORDS

CALIBRATION_SHAPE = (2, 8, 64, 64, 3)
# Embedding entries of this RMS give norms near 3.4 and dot products of a few units, as the real model's.
EMBEDDING_RMS = 0.15


def _initial(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    leaf = name.rsplit("/", 1)[-1]
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    if leaf == "weights":  # conv kernels feeding a ReLU
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    if leaf == "kernel":
        return rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
    if leaf == "word_embedding":
        table = rng.normal(0.0, 1.0, shape)
        table[0] = 0.0  # the padding row, as word2vec-initialised tables have it
        return table
    if leaf == "gamma":
        return rng.uniform(0.7, 1.3, shape)
    if leaf in ("beta", "bias"):
        return rng.normal(0.0, 0.1, shape)
    if leaf == "moving_variance":
        return np.ones(shape)
    return np.zeros(shape)  # moving_mean


def assign(module: tf.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Set every variable of `module` from `weights`; the names must match exactly."""
    variables = named_variables(module)
    missing, extra = sorted(set(variables) - set(weights)), sorted(set(weights) - set(variables))
    if missing or extra:
        raise ValueError(f"weights do not match the network: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, var in variables.items():
        var.assign(np.asarray(weights[name], dtype=var.dtype.as_numpy_dtype))


def snapshot(module: tf.Module) -> dict[str, np.ndarray]:
    """Current values of every variable, by name."""
    return {name: var.numpy() for name, var in named_variables(module).items()}


def calibrate_batchnorm(net: Network, rng: np.random.Generator) -> None:
    """Set moving statistics from one training-mode pass over random video, then perturb them."""
    norms = [m for m in net.video.submodules if isinstance(m, BatchNorm)]
    for bn in norms:
        bn.momentum = 1.0  # one pass copies the batch statistics
    try:
        net.video(tf.constant(rng.uniform(0, 1, CALIBRATION_SHAPE), tf.float32), training=True)
    finally:
        for bn in norms:
            del bn.momentum
    for bn in norms:
        # Deep layers of a random network carry a large per-channel constant with little variation
        # around it: normalising by the batch variance alone would amplify any shift of that constant
        # on the next clip by orders of magnitude. Flooring the variance at half the second moment keeps
        # activations bounded for every clip size while outputs still depend on the input.
        mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
        var = np.maximum(var, 0.5 * (var + np.square(mean))) + 1e-3
        bn.moving_mean.assign(mean + rng.normal(0.0, 0.2, var.shape) * np.sqrt(var))
        bn.moving_variance.assign(var * rng.uniform(0.6, 1.5, var.shape))


def scale_embeddings(net: Network, rng: np.random.Generator) -> None:
    """Rescale each tower's last dense layer so its embeddings have entries of RMS `EMBEDDING_RMS`."""
    clips = tf.constant(rng.uniform(0, 1, CALIBRATION_SHAPE), tf.float32)
    sentences = tf.constant([" ".join(rng.choice(COMMON_WORDS, 4)) for _ in range(8)])
    for dense, embed in ((net.video.fc, lambda: net.video(clips)["video_embedding"]),
                         (net.text.fc2, lambda: net.text(sentences)["text_embedding"])):
        rms = float(np.sqrt(np.mean(np.square(embed()))))
        for var in (dense.kernel, dense.bias):
            var.assign(var * (EMBEDDING_RMS / rms))


def standin_weights(net: Network, seed: int) -> dict[str, np.ndarray]:
    """Seeded random weights for `net` (each variable's values depend only on the seed and its name)."""
    weights = {name: _initial(name, tuple(var.shape), np.random.default_rng([seed, zlib.crc32(name.encode())]))
               for name, var in named_variables(net).items()}
    assign(net, weights)
    rng = np.random.default_rng(seed)
    calibrate_batchnorm(net, rng)
    scale_embeddings(net, rng)
    return snapshot(net)
