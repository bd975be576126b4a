"""gRPC front end: TF Serving's PredictionService and ModelService on the official stubs' method paths."""
from __future__ import annotations

from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.embedded.api import Api, abort_on_error


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, api: Api):
        self.api = api

    def Predict(self, request, context):  # noqa: N802 - gRPC method names
        return abort_on_error(lambda: self.api.predict(request, "GRPC"), context)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return abort_on_error(lambda: self.api.metadata(request, "GRPC"), context)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, api: Api):
        self.api = api

    def GetModelStatus(self, request, context):  # noqa: N802
        return abort_on_error(lambda: self.api.status(request, "GRPC"), context)
