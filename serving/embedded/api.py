"""The server's three calls, shared by the gRPC and REST front ends. Metrics are recorded by the front ends,
which know what TF Serving counts for each (see `metrics`)."""
from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from s3d_retrieval.serving.embedded.errors import ServingError, invalid
from s3d_retrieval.serving.embedded.manager import Manager
from s3d_retrieval.serving.embedded.metrics import Metrics

SIGNATURE_DEF = "signature_def"


def _check_spec(request) -> None:
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")


class Api:
    def __init__(self, manager: Manager, metrics: Metrics):
        self.manager, self.metrics = manager, metrics

    def predict(self, request: predict_pb2.PredictRequest, deadline: float | None = None) -> predict_pb2.PredictResponse:
        """`deadline`: time.monotonic() seconds after which the caller has given up (a queued batch skips it)."""
        _check_spec(request)
        with self.manager.servable(request.model_spec) as servable:
            return servable.predict(request, deadline)

    def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest) -> get_model_metadata_pb2.GetModelMetadataResponse:
        _check_spec(request)
        fields = list(request.metadata_field)
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for name in fields:
            if name != SIGNATURE_DEF:
                raise invalid(f"Metadata field {name} is not supported")
        with self.manager.servable(request.model_spec) as servable:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for key, sig in servable.signatures.items():
                signatures.signature_def[key].CopyFrom(sig)
            packed = any_pb2.Any()
            packed.Pack(signatures)
            response.metadata[SIGNATURE_DEF].CopyFrom(packed)
            return response

    def status(self, request: get_model_status_pb2.GetModelStatusRequest) -> get_model_status_pb2.GetModelStatusResponse:
        _check_spec(request)
        return self.manager.status(request.model_spec)


def abort_on_error(call: Callable, context: grpc.ServicerContext):
    try:
        return call()
    except ServingError as err:
        context.abort(err.code, err.message)
