"""Building blocks of S3D-G in plain TF ops, channels-last (NDHWC).

Plain `tf.Variable`s inside `tf.Module`s run eagerly and inside a TF1 graph alike, which the hub-format
writer needs (Keras 3 does not run in graph mode). Every variable gets an explicit, stable name so weights
can be moved between the eager network, the saved module and other checkpoints by name.
"""
from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

UPDATE_OPS = tf.compat.v1.GraphKeys.UPDATE_OPS


def variable(name: str, shape: Sequence[int], trainable: bool = True) -> tf.Variable:
    """A zero-initialised variable; real values are assigned afterwards (see `model.weights`).

    A v1 variable: eagerly and by default it is a resource variable, but inside
    `tf.compat.v1.variable_scope("", use_resource=False)` it becomes a legacy reference variable.
    """
    # Statistics are assigned by every replica of a tf.distribute run: all hold the same synchronised values.
    aggregation = tf.VariableAggregation.NONE if trainable else tf.VariableAggregation.ONLY_FIRST_REPLICA
    return tf.compat.v1.Variable(tf.zeros(shape), name=name, trainable=trainable, aggregation=aggregation)


def replicas() -> int:
    """How many replicas share this training step under tf.distribute (1 outside a strategy)."""
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


class BatchNorm(tf.Module):
    """BatchNorm with learnable scale/offset and moving statistics (PyTorch momentum 0.1)."""

    momentum = 0.1

    def __init__(self, scope: str, channels: int, epsilon: float):
        super().__init__(name=None)
        self.epsilon = epsilon
        self.gamma = variable(f"{scope}/gamma", [channels])
        self.beta = variable(f"{scope}/beta", [channels])
        self.moving_mean = variable(f"{scope}/moving_mean", [channels], trainable=False)
        self.moving_variance = variable(f"{scope}/moving_variance", [channels], trainable=False)

    def __call__(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        if not training:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, is_training=False, data_format="NDHWC")
            return y
        if replicas() > 1:
            y, mean, var = self._synchronised(x)
        else:
            y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, epsilon=self.epsilon, is_training=True, data_format="NDHWC")
        updates = [self.moving_mean.assign_sub((self.moving_mean - mean) * self.momentum),
                   self.moving_variance.assign_sub((self.moving_variance - var) * self.momentum)]
        if not tf.executing_eagerly():
            for update in updates:
                tf.compat.v1.add_to_collection(UPDATE_OPS, update)
        return y


    def _synchronised(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Normalise by the global batch's mean and (biased) variance; return the unbiased variance for the
        moving statistics, as the fused kernel does. Two passes (mean, then squared deviations): the shortcut
        E[x^2] - E[x]^2 loses the variance of near-flat feature maps to float32 cancellation."""
        context = tf.distribute.get_replica_context()
        values = tf.cast(x, tf.float32)
        axes = [0, 1, 2, 3]
        count = tf.cast(tf.reduce_prod(tf.shape(values)[:-1]), tf.float32)
        sums = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([tf.reduce_sum(values, axes), count[None]], 0))
        n = sums[-1]
        mean = sums[:-1] / n
        var = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.square(values - mean), axes)) / n
        y = tf.nn.batch_normalization(values, mean, var, self.beta, self.gamma, self.epsilon)
        return tf.cast(y, x.dtype), mean, var * n / tf.maximum(n - 1, 1.0)


class Unit(tf.Module):
    """Conv3D without bias -> BatchNorm -> ReLU."""

    def __init__(self, scope: str, cin: int, cout: int, kernel: Sequence[int], epsilon: float):
        super().__init__(name=None)
        self.weights = variable(f"{scope}/weights", [*kernel, cin, cout])
        self.bn = BatchNorm(f"{scope}/batch_norm", cout, epsilon)

    def __call__(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        y = tf.nn.conv3d(x, tf.cast(self.weights, x.dtype), strides=[1, 1, 1, 1, 1], padding="SAME")
        return tf.nn.relu(self.bn(y, training))


class SeparableUnit(tf.Module):
    """Separable 3D conv: spatial 1xkxk unit, then temporal kx1x1 unit."""

    def __init__(self, scope: str, cin: int, cout: int, k: int, epsilon: float):
        super().__init__(name=None)
        self.spatial = Unit(f"{scope}/spatial", cin, cout, (1, k, k), epsilon)
        self.temporal = Unit(f"{scope}/temporal", cout, cout, (k, 1, 1), epsilon)

    def __call__(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        return self.temporal(self.spatial(x, training), training)


class Dense(tf.Module):
    """x @ kernel + bias."""

    def __init__(self, scope: str, cin: int, cout: int):
        super().__init__(name=None)
        self.kernel = variable(f"{scope}/kernel", [cin, cout])
        self.bias = variable(f"{scope}/bias", [cout])

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.bias_add(tf.matmul(x, tf.cast(self.kernel, x.dtype)), tf.cast(self.bias, x.dtype))


class SelfGating(tf.Module):
    """S3D-G feature gating: scale channels by sigmoid(dense(mean over T, H, W))."""

    def __init__(self, scope: str, channels: int):
        super().__init__(name=None)
        self.fc = Dense(f"{scope}/gating", channels, channels)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        weights = tf.sigmoid(self.fc(tf.reduce_mean(x, axis=[1, 2, 3])))
        return x * weights[:, None, None, None, :]


def max_pool(x: tf.Tensor, kernel: Sequence[int], strides: Sequence[int]) -> tf.Tensor:
    """TF "SAME" 3D max pool (inputs are non-negative here, so zero and -inf padding agree)."""
    return tf.nn.max_pool3d(x, ksize=[1, *kernel, 1], strides=[1, *strides, 1], padding="SAME")
