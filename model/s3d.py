"""The S3D-G video tower of MIL-NCE, channels-last (reference §3)."""
from __future__ import annotations

import tensorflow as tf

from s3d_retrieval.model.config import INCEPTION_BLOCKS, POOL_BEFORE, Config
from s3d_retrieval.model.layers import Dense, SelfGating, SeparableUnit, Unit, max_pool


def space_to_depth(x: tf.Tensor) -> tf.Tensor:
    """[B,T,H,W,C] -> [B,T/2,H/2,W/2,8C], channels ordered (dt, dh, dw, c) as in the released weights."""
    shape = tf.shape(x)
    b, t, h, w, c = shape[0], shape[1], shape[2], shape[3], x.shape[-1]
    x = tf.reshape(x, [b, t // 2, 2, h // 2, 2, w // 2, 2, c])
    x = tf.transpose(x, [0, 1, 3, 5, 2, 4, 6, 7])
    return tf.reshape(x, [b, t // 2, h // 2, w // 2, 8 * c])


class Inception(tf.Module):
    """Four branches (1x1x1 | 1x1x1 -> sep 3x3x3 | 1x1x1 -> sep 3x3x3 | pool -> 1x1x1), each self-gated."""

    def __init__(self, scope: str, cin: int, widths: tuple[int, ...], epsilon: float):
        super().__init__(name=None)
        b0, b1a, b1b, b2a, b2b, b3b = widths
        self.b0 = Unit(f"{scope}/b0", cin, b0, (1, 1, 1), epsilon)
        self.b1a = Unit(f"{scope}/b1a", cin, b1a, (1, 1, 1), epsilon)
        self.b1b = SeparableUnit(f"{scope}/b1b", b1a, b1b, 3, epsilon)
        self.b2a = Unit(f"{scope}/b2a", cin, b2a, (1, 1, 1), epsilon)
        self.b2b = SeparableUnit(f"{scope}/b2b", b2a, b2b, 3, epsilon)
        self.b3b = Unit(f"{scope}/b3b", cin, b3b, (1, 1, 1), epsilon)
        self.gates = [SelfGating(f"{scope}/b{i}", c) for i, c in enumerate((b0, b1b, b2b, b3b))]
        self.channels = b0 + b1b + b2b + b3b

    def __call__(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        branches = (
            self.b0(x, training),
            self.b1b(self.b1a(x, training), training),
            self.b2b(self.b2a(x, training), training),
            self.b3b(max_pool(x, (3, 3, 3), (1, 1, 1)), training),
        )
        return tf.concat([gate(b) for gate, b in zip(self.gates, branches)], axis=-1)


class VideoTower(tf.Module):
    """Video [B,T,H,W,3] in [0,1] -> {"video_embedding": [B,512], "mixed_5c": [B,C]}.

    Downsamples x8 in time and x32 in space before global pooling; T, H and W must be even.
    """

    def __init__(self, config: Config, scope: str = "video"):
        super().__init__(name=None)
        eps, ch = config.bn_epsilon, config.channels
        self.conv1 = Unit(f"{scope}/conv1", 24, ch(64), (2, 4, 4), eps)
        self.conv_2b = Unit(f"{scope}/conv_2b", ch(64), ch(64), (1, 1, 1), eps)
        self.conv_2c = SeparableUnit(f"{scope}/conv_2c", ch(64), ch(192), 3, eps)
        self.gating = SelfGating(f"{scope}/conv_2c", ch(192))
        self.blocks = []
        cin = ch(192)
        for name, *widths in INCEPTION_BLOCKS:
            block = Inception(f"{scope}/{name}", cin, tuple(ch(w) for w in widths), eps)
            self.blocks.append((name, block))
            cin = block.channels
        self.fc = Dense(f"{scope}/fc", cin, config.embed_dim)

    def features(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The mixed_5c feature map before pooling: [B, T/8, H/32, W/32, C]."""
        x = self.conv1(space_to_depth(images), training)
        x = max_pool(x, (1, 3, 3), (1, 2, 2))
        x = self.gating(self.conv_2c(self.conv_2b(x, training), training))
        x = max_pool(x, (1, 3, 3), (1, 2, 2))
        for name, block in self.blocks:
            if name in POOL_BEFORE:
                x = max_pool(x, *POOL_BEFORE[name])
            x = block(x, training)
        return x

    def __call__(self, images: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        pooled = tf.reduce_mean(self.features(images, training), axis=[1, 2, 3])
        return {"video_embedding": self.fc(pooled), "mixed_5c": pooled}
