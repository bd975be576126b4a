"""The embedded TF Serving-compatible server: gRPC (+ grpc.health.v1) and REST over one model manager."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from s3d_retrieval.client.defaults import GRPC_PORT, REST_PORT
from s3d_retrieval.serving.embedded.api import Api
from s3d_retrieval.serving.embedded.batching import BatchingOptions, BatchScheduler
from s3d_retrieval.serving.embedded.errors import ServingError
from s3d_retrieval.serving.embedded.grpc_service import ModelService, PredictionService
from s3d_retrieval.serving.embedded.health import Health
from s3d_retrieval.serving.embedded.manager import LoadRetries, Manager
from s3d_retrieval.serving.embedded.metrics import Metrics
from s3d_retrieval.serving.embedded.rest import RestServer
from s3d_retrieval.serving.embedded.servable import Runtime

MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving accepts ~2 GiB; grpc's Python default is 4 MiB
log = logging.getLogger("serving")


@dataclass
class Options:
    models: model_server_config_pb2.ModelServerConfig
    host: str = "0.0.0.0"
    port: int = GRPC_PORT
    rest_port: int | None = REST_PORT  # None: no REST server; 0: any free port
    metrics_path: str | None = None  # Prometheus page on the REST port, from the monitoring config
    poll_seconds: float = 1.0
    workers: int = 16
    tensor_content: bool = False  # answer in tensor_content instead of typed fields
    batching: BatchingOptions | None = None  # None: no server-side batching (TF Serving without --enable_batching)
    load_retries: LoadRetries = LoadRetries()
    # --model_config_file_poll_wait_seconds: `config_source()` (the config file read again) every this many
    # seconds, applied as TF Serving applies it (0: never)
    config_source: Callable[[], model_server_config_pb2.ModelServerConfig] | None = None
    config_poll_seconds: float = 0.0
    allow_unavailable_labels: bool = False  # --allow_version_labels_for_unavailable_models


class EmbeddedServer:
    def __init__(self, options: Options):
        self.options = options
        metrics = Metrics(batching=options.batching is not None)
        self.scheduler = BatchScheduler(options.batching, metrics) if options.batching else None
        self.health = Health()
        self.manager = Manager(list(options.models.model_config_list.config),
                               Runtime(metrics, self.scheduler, options.tensor_content), options.poll_seconds,
                               options.load_retries, on_change=self.health.update,
                               allow_unavailable_labels=options.allow_unavailable_labels)
        self.api = Api(self.manager, metrics)
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="grpc"),
                                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                         ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(self.api), self.grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.api), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self.grpc)
        self.port = 0
        self.rest: RestServer | None = None
        self._stopping = threading.Event()
        self._config_poller: threading.Thread | None = None

    def start(self) -> EmbeddedServer:
        """Load the models first, then open the ports (as TF Serving does). A label the config cannot set ends
        the start with ServingError (TF Serving exits)."""
        self.manager.start()
        self.health.update(self.manager.available())
        self.port = self.grpc.add_insecure_port(f"{self.options.host}:{self.options.port}")
        self.grpc.start()
        if self.options.rest_port is not None:
            self.rest = RestServer(self.api, self.options.host, self.options.rest_port, self.options.metrics_path)
            self.rest.start()
        if self.options.config_source and self.options.config_poll_seconds > 0:
            self._config_poller = threading.Thread(target=self._poll_config, name="config-poller", daemon=True)
            self._config_poller.start()
        log.info("Running gRPC ModelServer at %s:%d", self.options.host, self.port)
        if self.rest:
            log.info("Exporting HTTP/REST API at %s:%d", self.options.host, self.rest.port)
        return self

    def _poll_config(self) -> None:
        """TF Serving's PollFilesystemAndReloadConfig: a config that cannot be read or applied is logged, and the
        one before goes on serving."""
        assert self.options.config_source is not None
        while not self._stopping.wait(self.options.config_poll_seconds):
            try:
                config = self.options.config_source()
            except Exception as err:  # noqa: BLE001 - a half-edited file: said, and read again next time
                log.error("Failed to read ModelServerConfig file: %s", err)
                continue
            if config.WhichOneof("config") is None:  # an empty file (caught mid-write): TF Serving keeps serving
                log.info("Taking no action for empty config.")
                continue
            try:
                self.manager.reload(list(config.model_config_list.config))
            except ServingError as err:
                log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", err.message)
            except Exception as err:  # noqa: BLE001 - the poller lives on: the next config may do
                log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", err)

    def stop(self, grace: float = 30.0) -> None:
        """Say NOT_SERVING, stop taking requests, let those in flight finish (up to `grace` s), unload."""
        self._stopping.set()
        self.manager.halt()  # a load waiting to retry gives up: the poller's reload returns
        if self._config_poller:
            self._config_poller.join()
        self.health.stop()
        self.grpc.stop(grace).wait()
        if self.rest:
            self.rest.stop()
        self.manager.stop()
        if self.scheduler:
            self.scheduler.stop()
