"""TF Serving warmup records: `assets.extra/tf_serving_warmup_requests`, a TFRecord of PredictionLog.

TF Serving replays them when it loads a version, so the first real request does not pay for graph
optimisation and memory allocation. A record whose dtype differs from the signature's fails the whole
load, so the tensors are built with the signatures' exact dtypes.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from s3d_retrieval.client.defaults import (DEFAULT_SIGNATURE, INPUT_KEYS, TEXT_SIGNATURE, VIDEO_SIGNATURE,
                                           VIDEO_UINT8_SIGNATURE)

WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP = Path("assets.extra") / WARMUP_FILE  # inside a version folder


def warmup_logs(model_name: str, frames: int, size: int) -> list[prediction_log_pb2.PredictionLog]:
    """One request per signature, at the clip shape the client sends ([1, frames, size, size, 3])."""
    clip = (1, frames, size, size, 3)
    values = {
        VIDEO_SIGNATURE: np.full(clip, 0.5, np.float32),
        VIDEO_UINT8_SIGNATURE: np.full(clip, 128, np.uint8),
        TEXT_SIGNATURE: np.array([b"a person playing guitar", b""], dtype=object),
    }
    requests = [(name, INPUT_KEYS[name], value) for name, value in values.items()]
    requests.append((tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY, INPUT_KEYS[DEFAULT_SIGNATURE],
                     values[DEFAULT_SIGNATURE]))
    logs = []
    for signature, key, value in requests:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup(path: Path, logs: list[prediction_log_pb2.PredictionLog]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())


def read_warmup(path: Path) -> Iterator[prediction_log_pb2.PredictionLog]:
    for record in tf.data.TFRecordDataset(str(path)):
        yield prediction_log_pb2.PredictionLog.FromString(record.numpy())
