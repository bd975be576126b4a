"""The serving configuration files in `config/` beside this module, parsed as TF Serving parses them.

The same files are `make serve`'s and the Kubernetes ConfigMaps' (`config/kustomization.yaml` generates them).

`models.config` is read with the official `tensorflow_serving.config` protos. The `tensorflow-serving-api`
package ships neither `BatchingParameters` nor `MonitoringConfig`, so those two are checked against
descriptors declared here with the official field names, numbers and types, under a package of our own
(registering `tensorflow.serving.*` a second time would clash with the official modules).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

HERE = Path(__file__).resolve().parent
MODELS_CONFIG = HERE / "config" / "models.config"
BATCHING_CONFIG = HERE / "config" / "batching.config"
MONITORING_CONFIG = HERE / "config" / "monitoring.config"
# Pinned TF Serving image: the newest release (its TF must not be older than the exporting TF's ops).
TF_SERVING_VERSION = "2.20.0"
TF_SERVING_IMAGE = f"tensorflow/serving:{TF_SERVING_VERSION}"
# TF Serving's defaults for a version whose load fails: --max_num_load_retries, --load_retry_interval_micros.
LOAD_RETRIES = 5
LOAD_RETRY_INTERVAL = 60.0  # seconds

_F = descriptor_pb2.FieldDescriptorProto
_FIELDS: dict[str, list[tuple[str, int, int, int, str | None]]] = {  # message -> [(name, number, type, label, type_name)]
    "BatchingParameters": [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
    ],
    "PrometheusConfig": [
        ("enable", 1, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
        ("path", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    ],
    "MonitoringConfig": [
        ("prometheus_config", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".s3d_serving.config.PrometheusConfig"),
    ],
}


def _message_classes() -> dict[str, Any]:  # classes made at run time: their fields are unknown to a type checker
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(name="s3d_serving/config.proto", package="s3d_serving.config",
                                              syntax="proto3", dependency=[wrappers_pb2.DESCRIPTOR.name])
    for message, fields in _FIELDS.items():
        proto = file.message_type.add(name=message)
        for name, number, kind, label, type_name in fields:
            field = proto.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
    pool.Add(file)
    return {m: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"s3d_serving.config.{m}"))
            for m in _FIELDS}


_CLASSES = _message_classes()


def parse_models(path: Path = MODELS_CONFIG):
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def parse_batching(path: Path = BATCHING_CONFIG) -> Any:  # (its class is made at run time)
    params = text_format.Parse(path.read_text(), _CLASSES["BatchingParameters"]())
    sizes = list(params.allowed_batch_sizes)
    if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != params.max_batch_size.value):
        raise ValueError(f"{path}: allowed_batch_sizes must increase and end at max_batch_size")
    return params


def parse_monitoring(path: Path = MONITORING_CONFIG) -> Any:
    return text_format.Parse(path.read_text(), _CLASSES["MonitoringConfig"]())
