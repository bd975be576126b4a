"""`grpc.health.v1.Health` (Check and Watch) on the gRPC port, from grpcio-health-checking's servicer.

TF Serving (`--enable_grpc_healthcheck_service`) answers SERVING for "" and its two services, "ModelService"
and "PredictionService", from the moment its ports open, which is after the initial load. This server says
the same for those names and also follows the models: each model's name is SERVING while one of its versions
is AVAILABLE (loaded and warmed up) and NOT_SERVING while none is, and "" is SERVING only while every
configured model is. A readiness probe on "" then fails while the server has nothing to serve.
"""
from __future__ import annotations

from grpc_health.v1 import health, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TF_SERVING_SERVICES = ("ModelService", "PredictionService")


class Health:
    def __init__(self) -> None:
        self.servicer = health.HealthServicer()
        self._said: dict[str, int] = {}
        for name in TF_SERVING_SERVICES:
            self._set(name, SERVING)

    def _set(self, service: str, status: int) -> None:
        """Watchers hear of changes only (the servicer itself repeats every set)."""
        if self._said.get(service) != status:
            self._said[service] = status
            self.servicer.set(service, status)

    def update(self, available: dict[str, bool]) -> None:
        """`available`: model name -> whether it has an AVAILABLE version."""
        for model, ready in available.items():
            self._set(model, SERVING if ready else NOT_SERVING)
        self._set("", SERVING if all(available.values()) else NOT_SERVING)

    def stop(self) -> None:
        """Going away: every watcher hears NOT_SERVING (the servicer's own shutdown)."""
        self.servicer.enter_graceful_shutdown()

