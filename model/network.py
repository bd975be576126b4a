"""The whole MIL-NCE network: video and text towers sharing one 512-d space."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from s3d_retrieval.model.config import Config
from s3d_retrieval.model.s3d import VideoTower
from s3d_retrieval.model.text import TextTower


class Network(tf.Module):
    """Both towers; `video(images)` and `text(sentences)` give embeddings whose dot product is the score."""

    def __init__(self, config: Config, table: tf.lookup.StaticHashTable):
        super().__init__(name=None)
        self.config = config
        self.video = VideoTower(config)
        self.text = TextTower(config, table)


def named_variables(module: tf.Module) -> dict[str, tf.Variable]:
    """Variables by their stable name (without the ':0' suffix)."""
    return {v.name.split(":")[0]: v for v in module.variables}


def learnable_parameters(module: tf.Module) -> int:
    """Number of trainable scalars (BatchNorm moving statistics excluded)."""
    return sum(int(np.prod(v.shape)) for v in module.trainable_variables)
