"""gRPC front end: TF Serving's PredictionService and ModelService on the official stubs' method paths.

Only Predict is counted in the metrics (GetModelMetadata and GetModelStatus are not, as in TF Serving), and
the caller's deadline travels with the request so a batch does not run for callers that have given up.
"""
from __future__ import annotations

import time

from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from s3d_retrieval.serving.embedded.api import Api, abort_on_error
from s3d_retrieval.serving.embedded.errors import ServingError


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, api: Api):
        self.api = api

    def Predict(self, request, context):  # noqa: N802 - gRPC method names
        start, status = time.perf_counter(), "OK"
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        try:
            return self.api.predict(request, deadline)
        except ServingError as err:
            status = err.code.name
            context.abort(err.code, err.message)
        except Exception:
            status = "UNKNOWN"  # what gRPC answers for an unexpected exception
            raise
        finally:
            self.api.metrics.request(request.model_spec.name, "Predict", "GRPC", status, time.perf_counter() - start)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return abort_on_error(lambda: self.api.metadata(request), context)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, api: Api):
        self.api = api

    def GetModelStatus(self, request, context):  # noqa: N802
        return abort_on_error(lambda: self.api.status(request), context)
