"""Pick how to serve: the `tensorflow_model_server` binary, the pinned Docker image, or the embedded server.

All three read the same config files, `serving/config/` (the Kubernetes ConfigMaps' source too); only the model
base path is rewritten to the local model directory (the committed `models.config` carries the container path
/models/<name>).
"""
from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from s3d_retrieval.serving.config import (BATCHING_CONFIG, LOAD_RETRIES, LOAD_RETRY_INTERVAL, MONITORING_CONFIG,
                                          TF_SERVING_IMAGE, parse_models)

CONTAINER_MODELS = "/models"
CONTAINER_CONFIG = "/config"
CONTAINER_LOCAL = "/config-local"  # the folder of the models.config written for this machine (a folder: see below)


@dataclass
class Plan:
    model_name: str
    model_dir: Path | None  # None: use the base paths of the given --model-config as they are
    model_config: Path | None
    port: int
    rest_port: int
    batching: bool
    gpu_memory_fraction: float | None
    load_retries: int = LOAD_RETRIES
    load_retry_interval: float = LOAD_RETRY_INTERVAL  # seconds
    config_poll_seconds: float = 0.0  # --model_config_file_poll_wait_seconds (0: the config is read once)
    allow_unavailable_labels: bool = False  # --allow_version_labels_for_unavailable_models


def models_config(plan: Plan, base_path: str | None = None) -> str:
    """The model config text: the given file, or the committed one pointed at `base_path`."""
    if plan.model_config:
        return plan.model_config.read_text()
    config = parse_models()
    entry = config.model_config_list.config[0]
    entry.name = plan.model_name
    assert plan.model_dir is not None, "a plan without --model-config names its model directory"
    entry.base_path = base_path or str(plan.model_dir.resolve())
    return text_format.MessageToString(config)


def model_server_config(plan: Plan):
    """`models_config(plan)` as a tensorflow.serving.ModelServerConfig (imports TF Serving's protos)."""
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(models_config(plan), model_server_config_pb2.ModelServerConfig())


def docker_engine() -> bool:
    """True when a Docker client is on PATH and an engine answers it."""
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def gpu_visible() -> bool:
    if not shutil.which("nvidia-smi"):
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def server_flags(plan: Plan, config_dir: str, model_config_file: str) -> list[str]:
    flags = [f"--port={plan.port}", f"--rest_api_port={plan.rest_port}",
             f"--model_config_file={model_config_file}",
             f"--monitoring_config_file={config_dir}/{MONITORING_CONFIG.name}",
             "--enable_grpc_healthcheck_service",  # grpc.health.v1 for probes (TF Serving 2.15.1+)
             f"--max_num_load_retries={plan.load_retries}",
             f"--load_retry_interval_micros={int(plan.load_retry_interval * 1e6)}"]
    if plan.config_poll_seconds > 0:
        flags.append(f"--model_config_file_poll_wait_seconds={plan.config_poll_seconds:g}")
    if plan.allow_unavailable_labels:
        flags.append("--allow_version_labels_for_unavailable_models=true")
    if plan.batching:
        flags += ["--enable_batching", f"--batching_parameters_file={config_dir}/{BATCHING_CONFIG.name}"]
    if plan.gpu_memory_fraction is not None:
        flags.append(f"--per_process_gpu_memory_fraction={plan.gpu_memory_fraction}")
    return flags


def binary_command(plan: Plan, config_file: Path) -> list[str]:
    return ["tensorflow_model_server", *server_flags(plan, str(BATCHING_CONFIG.parent), str(config_file))]


def docker_command(plan: Plan, config_file: Path, gpu: bool) -> list[str]:
    """`docker run` of the pinned image with the model folder and this config folder mounted read-only; the local
    models.config's folder rather than the file, so that a config written again (`keep_config`) is seen."""
    image = f"{TF_SERVING_IMAGE}-gpu" if gpu else TF_SERVING_IMAGE
    mounts = ["-v", f"{BATCHING_CONFIG.parent}:{CONTAINER_CONFIG}:ro",
              "-v", f"{config_file.parent}:{CONTAINER_LOCAL}:ro"]
    if plan.model_dir:
        mounts += ["-v", f"{plan.model_dir.resolve()}:{CONTAINER_MODELS}/{plan.model_name}:ro"]
    return ["docker", "run", "--rm", "--init", *(["--gpus", "all"] if gpu else []),
            "-p", f"{plan.port}:{plan.port}", "-p", f"{plan.rest_port}:{plan.rest_port}", *mounts, image,
            *server_flags(plan, CONTAINER_CONFIG, f"{CONTAINER_LOCAL}/{config_file.name}")]


def keep_config(plan: Plan, config_file: Path, base_path: str | None, stop: threading.Event) -> threading.Thread:
    """While TF Serving polls its config (`config_poll_seconds`), write `config_file` again from the source
    (the committed models.config or --model-config) whenever it changed: the file TF Serving reads is this
    machine's copy, with the local base path. Replaced by rename, so it never reads half of one."""
    def refresh() -> None:
        while not stop.wait(plan.config_poll_seconds):
            try:
                text = models_config(plan, base_path)
            except Exception:  # noqa: BLE001 - a half-edited source: TF Serving keeps the config it has
                continue
            if text != config_file.read_text():
                tmp = config_file.with_name(f".{config_file.name}.tmp")
                tmp.write_text(text)
                tmp.replace(config_file)

    thread = threading.Thread(target=refresh, name="config-copy", daemon=True)
    thread.start()
    return thread
