"""Model versions on disk -> loaded servables, as TF Serving's file-system source and manager do.

Every `poll_seconds` each model's base path is scanned for numeric version folders; the version policy
(`latest {num_versions}`, `all`, `specific`) picks which to serve. `version_labels` name versions (`stable`,
`canary`); as TF Serving's ServerCore does, a label may point only at a version AVAILABLE when the config is
applied (FAILED_PRECONDITION otherwise, the config refused whole), unless `allow_unavailable_labels`
(`--allow_version_labels_for_unavailable_models`) lets a label that is new, or unchanged, point at a version not
loaded yet; a request by an unknown label is INVALID_ARGUMENT. `reload` applies a new config while serving
(`--model_config_file_poll_wait_seconds`): labels first, then the versions the new policies want are loaded and
the others unloaded, each after the requests already running on it. A new version is loaded (and warmed up)
before the old one is unloaded, and unloading waits for the old version's requests in flight, so a
version swap fails no request. A failed load is retried as TF Serving retries it (`max_num_load_retries`
5 times, `load_retry_interval` 60 s apart), the version staying LOADING meanwhile; if every attempt fails it
ends in state END with the last error. It never takes the server down, and the previous version goes on
serving. `on_change` hears of every version that becomes or stops being AVAILABLE (the health service).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from s3d_retrieval.serving.config import LOAD_RETRIES, LOAD_RETRY_INTERVAL
from s3d_retrieval.serving.embedded.errors import ServingError, invalid, not_found
from s3d_retrieval.serving.embedded.servable import Runtime, Servable

State = get_model_status_pb2.ModelVersionStatus.State
log = logging.getLogger("serving")


@dataclass
class Version:
    state: int = State.START
    error_code: int = 0
    error_message: str = ""
    servable: Servable | None = None


@dataclass
class Model:
    config: model_server_config_pb2.ModelConfig
    versions: dict[int, Version] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    def on_disk(self) -> list[int]:
        base = Path(self.config.base_path)
        if not base.is_dir():
            return []
        return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and p.is_dir())

    def wanted(self) -> set[int]:
        present = self.on_disk()
        policy = self.config.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return set(present)
        if kind == "specific":
            return set(present) & set(policy.specific.versions)
        count = policy.latest.num_versions if kind == "latest" else 1
        return set(present[-max(count, 1):])


@dataclass(frozen=True)
class LoadRetries:
    """TF Serving's `--max_num_load_retries` and `--load_retry_interval_micros` defaults."""

    count: int = LOAD_RETRIES
    interval: float = LOAD_RETRY_INTERVAL  # seconds


class Manager:
    """Loads, serves and unloads the versions of the configured models."""

    def __init__(self, models: list[model_server_config_pb2.ModelConfig], runtime: Runtime,
                 poll_seconds: float = 1.0, retries: LoadRetries = LoadRetries(),
                 on_change: Callable[[dict[str, bool]], None] | None = None, allow_unavailable_labels: bool = False):
        self.models = {m.name: Model(m) for m in models}
        self.labels: dict[str, dict[str, int]] = {}  # model -> label -> version
        self.runtime = runtime
        self.poll_seconds = poll_seconds
        self.retries = retries
        self.on_change = on_change
        self.allow_unavailable_labels = allow_unavailable_labels
        self._lock = threading.Lock()
        self._polling = threading.Lock()  # one poll at a time (the poller's, a reload's)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> None:
        """Apply the labels (as TF Serving does before anything is loaded: FAILED_PRECONDITION unless
        `allow_unavailable_labels`), load what is on disk (waiting, like TF Serving, until every model has a
        version), then poll."""
        self.labels = self._label_map([m.config for m in self.models.values()])
        warned: set[str] = set()
        while not self._stop.is_set():
            self.poll()
            missing = [m for m in self.models.values() if not m.versions]
            if not missing:
                break
            for model in missing:
                if model.name not in warned:
                    warned.add(model.name)
                    log.warning("No versions of servable %s found under base path %s; waiting for one",
                                model.name, model.config.base_path)
            self._stop.wait(self.poll_seconds)
        self._poller = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)
        self._poller.start()

    def halt(self) -> None:
        """No more loads: one waiting to retry gives up (the server stops)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join()
        for model in self.models.values():
            for number in list(model.versions):
                self._unload(model, number)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.poll()

    def reload(self, models: list[model_server_config_pb2.ModelConfig]) -> None:
        """A new config while serving (TF Serving's ReloadConfig): the labels checked against what is available
        now (ServingError, nothing changed, if one cannot be set), then the new policies applied: versions they
        want loaded, the others and removed models' unloaded after their requests in flight."""
        labels = self._label_map(models)
        gone = []
        with self._lock:
            self.labels = labels
            for config in models:
                if config.name in self.models:
                    self.models[config.name].config = config
                else:
                    self.models[config.name] = Model(config)
            for name in set(self.models) - {m.name for m in models}:
                gone.append(self.models.pop(name))
        for model in gone:
            for number in list(model.versions):
                self._unload(model, number)
        self.poll()

    def _label_map(self, models: list[model_server_config_pb2.ModelConfig]) -> dict[str, dict[str, int]]:
        """Each model's labels, if each may point where the config says (ServerCore::UpdateModelVersionLabelMap)."""
        found: dict[str, dict[str, int]] = {}
        with self._lock:
            for config in models:
                model = self.models.get(config.name)
                for label, version in config.version_labels.items():
                    before = self.labels.get(config.name, {}).get(label)
                    loose = self.allow_unavailable_labels and before in (None, version)
                    state = model.versions[version].state if model and version in model.versions else None
                    if not loose and state != State.AVAILABLE:
                        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                           f"Request to assign label to version {version} of model {config.name}, "
                                           f"which is not currently available for inference")
                    found.setdefault(config.name, {})[label] = version
        return found

    def poll(self) -> None:
        with self._polling:
            self._poll()

    def _poll(self) -> None:
        for model in list(self.models.values()):
            wanted = model.wanted()
            unloaded = {n for n, v in model.versions.items() if v.state == State.END and not v.error_code}
            for number in sorted(wanted - (set(model.versions) - unloaded)):  # new, or wanted again (not failed)
                self._load(model, number)
            if not any(model.versions[n].state == State.AVAILABLE for n in wanted if n in model.versions):
                continue  # keep serving the old version while no wanted one is available
            for number, version in list(model.versions.items()):
                if number not in wanted and version.state == State.AVAILABLE:
                    self._unload(model, number)

    def _load(self, model: Model, number: int) -> None:
        version = Version(state=State.LOADING)
        with self._lock:
            model.versions[number] = version
        path = Path(model.config.base_path) / str(number)
        for attempt in range(self.retries.count + 1):
            try:
                servable = Servable(model.name, number, path, self.runtime)
                break
            except Exception as err:  # noqa: BLE001 - any load failure is reported per version
                message = f"{type(err).__name__}: {err}"[:1024]
                if attempt == self.retries.count:
                    with self._lock:  # TF OpError codes are gRPC codes; else UNKNOWN
                        version.state, version.error_code = State.END, getattr(err, "error_code", 2)
                        version.error_message = message
                    log.error("Loading %s version %d failed: %s", model.name, number, message)
                    self._changed()
                    return
                log.warning("Loading %s version %d failed (attempt %d of %d), retrying in %g s: %s", model.name,
                            number, attempt + 1, self.retries.count + 1, self.retries.interval, message)
                if self._stop.wait(self.retries.interval):
                    return
        with self._lock:
            version.servable, version.state = servable, State.AVAILABLE
        log.info("Successfully loaded servable version {name: %s version: %d}", model.name, number)
        self._changed()

    def available(self) -> dict[str, bool]:
        """Model name -> whether one of its versions is AVAILABLE."""
        with self._lock:
            return {name: any(v.state == State.AVAILABLE for v in m.versions.values())
                    for name, m in self.models.items()}

    def _changed(self) -> None:
        if self.on_change:
            self.on_change(self.available())

    def _unload(self, model: Model, number: int) -> None:
        with self._lock:  # after this no new request can pick the version
            version = model.versions[number]
            servable, version.servable = version.servable, None
            if servable is None:
                return
            version.state = State.UNLOADING
        self._changed()
        servable.close()  # waits for the requests already running on it
        with self._lock:
            version.state = State.END
        log.info("Unloaded servable version {name: %s version: %d}", model.name, number)

    @contextlib.contextmanager
    def servable(self, spec: model_pb2.ModelSpec) -> Iterator[Servable]:
        """The version a request asks for (latest by default), held while the request runs."""
        with self._lock:
            model = self.models.get(spec.name)
            available = {n: v.servable for n, v in model.versions.items() if v.servable} if model else {}
            asked = spec.version.value if spec.HasField("version") else None
            if spec.version_label:
                asked = self.labels.get(spec.name, {}).get(spec.version_label)
                if asked is None:
                    raise invalid(f"Unrecognized servable version label: {spec.version_label}")
            if asked is not None:
                chosen = available.get(asked)
                if chosen is None:
                    raise not_found(f"Servable not found for request: Specific({spec.name}, {asked})")
            elif available:
                chosen = available[max(available)]
            else:
                raise not_found(f"Servable not found for request: Latest({spec.name})")
            chosen.__enter__()
        try:
            yield chosen
        finally:
            chosen.__exit__(None, None, None)

    def status(self, spec: model_pb2.ModelSpec) -> get_model_status_pb2.GetModelStatusResponse:
        with self._lock:
            model = self.models.get(spec.name)
            if model is None or not model.versions:
                raise not_found(f"Could not find any versions of model {spec.name}")
            numbers = sorted(model.versions, reverse=True)
            if spec.HasField("version"):
                if spec.version.value not in model.versions:
                    raise not_found(f"Could not find version {spec.version.value} of model {spec.name}")
                numbers = [spec.version.value]
            response = get_model_status_pb2.GetModelStatusResponse()
            for number in numbers:
                v = model.versions[number]
                entry = response.model_version_status.add(version=number, state=v.state)
                entry.status.error_code, entry.status.error_message = v.error_code, v.error_message
            return response
