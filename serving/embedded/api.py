"""The server's three calls, shared by the gRPC and REST front ends; records metrics for each."""
from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from google.protobuf import any_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, predict_pb2)

from serving.embedded.errors import ServingError, invalid
from serving.embedded.manager import Manager
from serving.embedded.metrics import Metrics

SIGNATURE_DEF = "signature_def"


class Api:
    def __init__(self, manager: Manager, metrics: Metrics):
        self.manager, self.metrics = manager, metrics

    def _timed(self, api: str, entrypoint: str, request, run: Callable):
        start = time.perf_counter()
        status = "OK"
        try:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            return run()
        except ServingError as err:
            status = err.code.name
            raise
        finally:
            self.metrics.record(request.model_spec.name, api, entrypoint, status, time.perf_counter() - start)

    def predict(self, request: predict_pb2.PredictRequest, entrypoint: str) -> predict_pb2.PredictResponse:
        def run():
            with self.manager.servable(request.model_spec) as servable:
                return servable.predict(request)

        return self._timed("predict", entrypoint, request, run)

    def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                 entrypoint: str) -> get_model_metadata_pb2.GetModelMetadataResponse:
        def run():
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

        return self._timed("get_model_metadata", entrypoint, request, run)

    def status(self, request: get_model_status_pb2.GetModelStatusRequest,
               entrypoint: str) -> get_model_status_pb2.GetModelStatusResponse:
        return self._timed("get_model_status", entrypoint, request, lambda: self.manager.status(request.model_spec))


def abort_on_error(call: Callable, context: grpc.ServicerContext):
    try:
        return call()
    except ServingError as err:
        context.abort(err.code, err.message)
