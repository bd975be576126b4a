"""The MIL-NCE loss (Miech et al., CVPR 2020; reference §5)."""
from __future__ import annotations

import tensorflow as tf


def milnce_loss(video: tf.Tensor, text: tf.Tensor) -> tf.Tensor:
    """Mean MIL-NCE loss of a batch.

    video: [B, D] clip embeddings; text: [B, P, D], a bag of P candidate narrations per clip. For clip i
    the positives are its own bag; the negatives are every other clip's narrations scored against clip i
    and clip i's narrations scored against every other clip.
    """
    scores = tf.einsum("id,jpd->ijp", video, text)  # [B(video), B(text bag), P]
    batch = tf.shape(scores)[0]
    own = tf.eye(batch, dtype=tf.bool)[:, :, None] & tf.ones_like(scores, dtype=tf.bool)
    positives = tf.reduce_logsumexp(tf.where(own, scores, -float("inf")), axis=[1, 2])
    as_video = tf.reshape(scores, [batch, -1])  # clip i against every narration
    as_text = tf.reshape(tf.where(own, -float("inf"), tf.transpose(scores, [1, 0, 2])), [batch, -1])
    denominator = tf.reduce_logsumexp(tf.concat([as_video, as_text], axis=1), axis=1)
    return tf.reduce_mean(denominator - positives)
