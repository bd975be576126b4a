"""The PyTorch port's released weights (`s3d_howto100m.pth`, `s3d_dict.npy`) in this project's network.

The port (antoine77340/S3D_HowTo100M) holds the TF Hub weights as a bare state_dict of 537 tensors,
channels-first. `convert` renames and transposes them into this network's variables: Conv3d
[out, in, t, h, w] -> [t, h, w, in, out], Linear [out, in] -> [in, out], BatchNorm weight/bias/running stats ->
gamma/beta/moving stats (`num_batches_tracked` is dropped). The .pth is read without PyTorch (`pth`); `convert`
itself works on any name -> array mapping.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from s3d_retrieval.model.config import INCEPTION_BLOCKS
from s3d_retrieval.model.pth import CheckpointError, read_tensors

BRANCHES = {"conv_b0": "b0", "conv_b1_a": "b1a", "conv_b1_b": "b1b", "conv_b2_a": "b2a", "conv_b2_b": "b2b",
            "conv_b3_b": "b3b"}
SEPARABLE = {"conv_2c", "conv_b1_b", "conv_b2_b"}
BATCH_NORM = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def _tables() -> tuple[dict[str, str], dict[str, str]]:
    """Port module -> this network's scope: (dense layers, conv units)."""
    dense = {"fc": "video/fc", "gating.fc": "video/conv_2c/gating", "text_module.fc1": "text/fc1",
             "text_module.fc2": "text/fc2"}
    units = {"conv1": "video/conv1", "conv_2b": "video/conv_2b", "conv_2c": "video/conv_2c"}
    for block, *_ in INCEPTION_BLOCKS:
        units.update({f"{block}.{port}": f"video/{block}/{ours}" for port, ours in BRANCHES.items()})
        dense.update({f"{block}.gating_b{i}.fc": f"video/{block}/b{i}/gating" for i in range(4)})
    return dense, units


def _name(key: str, dense: dict[str, str], units: dict[str, str]) -> str | None:
    """This network's variable name for a port key (None: no counterpart); KeyError if unknown."""
    if key == "text_module.word_embd.weight":
        return "text/word_embedding"
    module, leaf = key.rsplit(".", 1)
    if leaf == "num_batches_tracked":
        return None
    if module in dense:
        return f"{dense[module]}/{'kernel' if leaf == 'weight' else 'bias'}"
    prefix, _, layer = module.rpartition(".")  # e.g. "mixed_3b.conv_b1_b", "bn2"
    base = units[prefix]
    if prefix.rsplit(".", 1)[-1] in SEPARABLE:  # conv1/bn1 = spatial, conv2/bn2 = temporal
        base += "/spatial" if layer.endswith("1") else "/temporal"
    return f"{base}/weights" if layer.startswith("conv") else f"{base}/batch_norm/{BATCH_NORM[leaf]}"


def convert(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Port state_dict -> {variable name: array}, laid out for this network."""
    dense, units = _tables()
    weights = {}
    for key, value in state_dict.items():
        try:
            name = _name(key, dense, units)
        except KeyError:
            raise ValueError(f"unexpected key in the state_dict: {key} (is this the S3D HowTo100M checkpoint?)") from None
        if name is None:
            continue
        array = np.asarray(value, dtype=np.float32)
        if array.ndim == 5:
            array = array.transpose(2, 3, 4, 1, 0)
        elif array.ndim == 2 and name.endswith("/kernel"):
            array = array.T
        weights[name] = array
    return weights


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    try:
        return read_tensors(path)
    except (CheckpointError, OSError) as err:
        raise SystemExit(f"error: {path}: {err}; pass the port's s3d_howto100m.pth") from None


def read_vocabulary(path: str | Path) -> list[str]:
    """The port's word list (`s3d_dict.npy`): word i has id i + 1."""
    return [str(w) for w in np.load(path, allow_pickle=True)]
