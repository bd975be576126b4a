"""The MIL-NCE loss (Miech et al., CVPR 2020; reference §5)."""
from __future__ import annotations

import tensorflow as tf


def milnce_rows(video: tf.Tensor, text: tf.Tensor, all_video: tf.Tensor, all_text: tf.Tensor,
                offset: tf.Tensor | int) -> tf.Tensor:
    """MIL-NCE loss of each clip in `video` [b, D] with its bags `text` [b, P, D], against the whole batch
    `all_video` [B, D] and `all_text` [B, P, D], where the b clips sit at rows offset.. (one replica's share of
    a batch gathered across replicas: every replica scores its own clips against every clip's narrations).

    Clip i's positives are its own bag; its negatives are every other clip's narrations scored against clip i,
    and clip i's narrations scored against every other clip. Returns [b].
    """
    rows = tf.shape(video)[0]
    batch = tf.shape(all_video)[0]
    own = tf.one_hot(tf.range(rows) + offset, batch, on_value=True, off_value=False)  # [b, B]
    own = own[:, :, None] & tf.ones_like(all_text[None, :, :, 0], dtype=tf.bool)  # [b, B, P]
    as_video = tf.einsum("id,jpd->ijp", video, all_text)  # clip i against every bag
    as_text = tf.einsum("jd,ipd->ijp", all_video, text)  # clip i's bag against every clip
    positives = tf.reduce_logsumexp(tf.where(own, as_video, -float("inf")), axis=[1, 2])
    others = tf.where(own, -float("inf"), as_text)
    denominator = tf.reduce_logsumexp(tf.concat([tf.reshape(as_video, [rows, -1]), tf.reshape(others, [rows, -1])],
                                                axis=1), axis=1)
    return denominator - positives


def milnce_loss(video: tf.Tensor, text: tf.Tensor) -> tf.Tensor:
    """Mean MIL-NCE loss of a batch: video [B, D] clip embeddings, text [B, P, D] each clip's bag."""
    return tf.reduce_mean(milnce_rows(video, text, video, text, 0))
