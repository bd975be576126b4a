"""A gRPC session with a TF Serving model: embeddings for sentences and video windows.

Channel options for large messages, an explicit deadline on every call, patience with UNAVAILABLE (servers
restarting, pods rolling: retried with jittered exponential back-off for up to `wait` seconds, said once),
optional TLS, `round_robin` over every address a name resolves to (a Kubernetes headless Service), several
windows per request and a bounded number of requests in flight. Failures become one `ServerError` line that
names the address and what to check.
"""
from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from s3d_retrieval.client.transport import protos
from s3d_retrieval.client.defaults import (DEFAULT_LABEL, GRPC_PORT, INPUT_KEYS, LABELS, MODEL_NAME,
                                           PREPROCESSING_OUTPUT, PREPROCESSING_SIGNATURE, SENTENCES_PER_REQUEST,
                                           SERVER_ENV, TEXT_OUTPUT, TEXT_SIGNATURE, TIMEOUT, VIDEO_SIGNATURE,
                                           VIDEO_UINT8_SIGNATURE, WINDOWS_PER_REQUEST)
from s3d_retrieval.client.transport.tensors import to_numpy, to_proto
from s3d_retrieval.client.errors import Error

MAX_MESSAGE_BYTES = 2**31 - 1
MAX_BACKOFF = 8.0  # seconds: the longest pause between two attempts while the server is away
SAMPLING_NAMES = ("frames", "fps", "size")  # what the `preprocessing` signature is asked for


def _serialize(message) -> bytes:
    """Requests may come serialized already (see `Session._request`)."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class ServerError(Error):
    """The server cannot be used (unreachable, not ready, model missing...); one line saying what to check."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class VersionNotServed(ServerError):
    """The model version a request must name is not AVAILABLE; `served` lists those that are."""

    def __init__(self, message: str, version: int, served: list[int]):
        super().__init__(message)
        self.version, self.served = version, served


def default_server() -> str:
    """The model server's address when none is given: $S3D_SERVER (SERVER_ENV), else this machine's GRPC_PORT."""
    return os.environ.get(SERVER_ENV) or f"localhost:{GRPC_PORT}"


@dataclass
class Options:
    address: str = field(default_factory=default_server)
    model: str = MODEL_NAME
    timeout: float = TIMEOUT  # seconds, per call
    wait: float = 10.0  # seconds to keep retrying while the server is UNAVAILABLE (0: fail at once)
    backoff: float = 0.25  # first pause in seconds, doubled each retry up to MAX_BACKOFF, jittered
    tls: bool = False
    tls_ca: Path | None = None  # PEM roots; default: the system's
    windows_per_request: int = WINDOWS_PER_REQUEST
    sentences_per_request: int = SENTENCES_PER_REQUEST
    concurrency: int = 4  # requests in flight at once
    float_input: bool = False  # send float32 to `video` instead of uint8 to `video_uint8` (4x the bytes)
    log: Callable[[str], None] | None = None  # where "waiting for the server" lines go (None: nowhere)


CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.lb_policy_name", "round_robin"),
                   # reconnect soon after a restarted server is back (gRPC's own default waits up to 120 s)
                   ("grpc.initial_reconnect_backoff_ms", 500),
                   ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF * 1000))]
METHODS = ((protos.PREDICT, protos.PredictResponse), (protos.GET_MODEL_STATUS, protos.GetModelStatusResponse),
           (protos.GET_MODEL_METADATA, protos.GetModelMetadataResponse))


def credentials(options: Options) -> grpc.ChannelCredentials | None:
    """TLS credentials when asked for (None: plaintext)."""
    if not (options.tls or options.tls_ca):
        return None
    return grpc.ssl_channel_credentials(options.tls_ca.read_bytes() if options.tls_ca else None)


class Protocol:
    """What a session says and understands, without the I/O: the messages, the one-line errors, the notes
    about an outage and the back-off. `Session` (threads) and `AsyncSession` (asyncio) send them."""

    def __init__(self, options: Options):
        self.options = options
        self.requests = 0  # RPCs sent (retries included): lets callers and tests see work that was skipped
        self._lock = threading.Lock()
        self._outage: float | None = None  # when the server was first found away, while it still is

    def _sent(self) -> None:
        with self._lock:
            self.requests += 1

    def _retry_pause(self, err: grpc.RpcError, pause: float, give_up: float) -> float | None:
        """How long to wait before sending again (jittered), or None when the error is final."""
        left = give_up - time.monotonic()
        if err.code() != grpc.StatusCode.UNAVAILABLE or left <= 0:
            return None
        self._away(err)
        return min(left, pause / 2 + random.uniform(0, pause / 2))

    def _explain(self, err: grpc.RpcError) -> ServerError:
        address, model, code = self.options.address, self.options.model, err.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            waited = f" after waiting {self.options.wait:g} s" if self.options.wait > 0 else ""
            message = (f"cannot reach the model server at {address}{waited} ({err.details()}); check that it is "
                       f"running (make serve) and the --server address, or raise --wait")
        elif code == grpc.StatusCode.NOT_FOUND and (number := _specific(err.details() or "")):
            message = (f"model '{model}' version {number} is not served at {address} ({err.details()}): serve it "
                       f"again (models.config), or use an index of a version that is served")
        elif code == grpc.StatusCode.NOT_FOUND:
            message = (f"model '{model}' is not available at {address} ({err.details()}); check --model "
                       f"and that a version is exported and loaded (status)")
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message = (f"{address} did not answer within {self.options.timeout:g} s; raise --timeout or "
                       f"send fewer windows per request")
        else:
            message = f"{address} refused the request: {code.name}: {err.details()}"
        return ServerError(message, code)

    def _say(self, message: str) -> None:
        if self.options.log:
            self.options.log(message)

    def _away(self, err: grpc.RpcError) -> None:
        """Say once per outage what we wait for."""
        with self._lock:
            if self._outage is not None:
                return
            self._outage = time.monotonic()
        self._say(f"waiting up to {self.options.wait:g} s for the model server at {self.options.address} "
                  f"({err.code().name}: {err.details()})")

    def _back(self) -> None:
        with self._lock:
            began, self._outage = self._outage, None
        if began is not None:
            self._say(f"the model server at {self.options.address} answers again "
                      f"(after {time.monotonic() - began:.0f} s)")

    def _spec(self, target, signature: str = "", version: int | None = None, label: str | None = None) -> None:
        """Every request names the model, and the version its answer must come from (None: the server's choice,
        asked only to learn which versions there are)."""
        target.name = self.options.model
        if signature:
            target.signature_name = signature
        if version is not None:
            target.version.value = version
        elif label is not None:
            target.version_label = label

    def _request(self, signature: str, value: np.ndarray, output_filter: Sequence[str],
                 version: int | None = None) -> bytes:
        """A PredictRequest, serialized at once: the bytes are all a request in flight keeps of its tensor."""
        request = protos.PredictRequest()
        self._spec(request.model_spec, signature, version)
        to_proto(value, into=request.inputs[INPUT_KEYS[signature]])
        request.output_filter.extend(output_filter)
        return request.SerializeToString()

    def _answer(self, response) -> tuple[dict[str, np.ndarray], int]:
        outputs = {}
        for key, tensor in response.outputs.items():
            array = to_numpy(tensor)
            if array is None:
                raise ServerError(f"{self.options.address} sent an undecodable tensor for '{key}'")
            outputs[key] = array
        return outputs, response.model_spec.version.value

    def _status_request(self):
        request = protos.GetModelStatusRequest()
        self._spec(request.model_spec)
        return request

    @staticmethod
    def _status_rows(response) -> list[tuple[int, str, int, str]]:
        return [(s.version, protos.STATE_NAMES.get(s.state, str(s.state)), s.status.error_code,
                 s.status.error_message) for s in response.model_version_status]

    def _metadata_request(self, version: int | None = None, label: str | None = None):
        request = protos.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, version=version, label=label)
        return request

    @staticmethod
    def _signatures(response) -> tuple[int, Any]:
        signatures = protos.SignatureDefMap()
        signatures.ParseFromString(response.metadata["signature_def"].value)
        return response.model_spec.version.value, signatures

    def _available(self, states: list[tuple[int, str, int, str]], version: int | None = None) -> int:
        """`version` if it is AVAILABLE (else VersionNotServed), or the newest AVAILABLE one, or a ServerError
        saying what is wrong."""
        available = sorted(v for v, state, _, _ in states if state == "AVAILABLE")
        if not available:
            detail = "; ".join(f"version {v} {s}{': ' + m if m else ''}" for v, s, _, m in states)
            raise ServerError(f"model '{self.options.model}' at {self.options.address} is not ready ({detail})")
        if version is not None and version not in available:
            raise VersionNotServed(f"model '{self.options.model}' version {version} is not served at "
                                   f"{self.options.address} (it serves {_versions(available)})", version, available)
        return max(available) if version is None else version

    def _label(self, label: str, response_or_error) -> int | None:
        """The version a label names (None: the server has no such label; VersionNotServed: it names a version
        that is not loaded)."""
        if isinstance(response_or_error, ServerError):
            if response_or_error.code == grpc.StatusCode.INVALID_ARGUMENT:  # "Unrecognized servable version label"
                return None
            if response_or_error.code == grpc.StatusCode.NOT_FOUND and (number := _specific(str(response_or_error))):
                raise VersionNotServed(f"the label {label!r} of model '{self.options.model}' at "
                                       f"{self.options.address} names version {number}, which is not loaded; serve "
                                       f"it, or move the label (models.config)", number, [])
            raise response_or_error
        return response_or_error.model_spec.version.value

    def _preprocessing_request(self, version: int | None = None) -> bytes:
        return self._request(PREPROCESSING_SIGNATURE, np.array([n.encode() for n in SAMPLING_NAMES], dtype=object),
                             (PREPROCESSING_OUTPUT,), version)

    @staticmethod
    def _sampling(values: np.ndarray) -> dict[str, float] | None:
        found = {n: float(v) for n, v in zip(SAMPLING_NAMES, values) if v > 0}
        return found if len(found) == len(SAMPLING_NAMES) else None

    def _video_request(self, batch: np.ndarray, version: int | None = None) -> bytes:
        """uint8 windows to `video_uint8`, or float32 to `video` (`float_input`)."""
        if self.options.float_input:
            return self._request(VIDEO_SIGNATURE, batch.astype(np.float32) / np.float32(255), ("video_embedding",),
                                 version)
        return self._request(VIDEO_UINT8_SIGNATURE, batch, ("video_embedding",), version)


def _specific(details: str) -> int | None:
    """The version of TF Serving's "Servable not found for request: Specific(name, N)", else None."""
    found = re.search(r"Specific\([^,]*, (\d+)\)", details)
    return int(found[1]) if found else None


def _versions(numbers: list[int]) -> str:
    return ("version " if len(numbers) == 1 else "versions ") + ", ".join(map(str, numbers))


def served_text(versions: list[int], labels: dict[str, int]) -> str:
    """What a server serves, for messages: `versions 2, 3 (stable=2, canary=3)`."""
    named = ", ".join(f"{label}={version}" for label, version in labels.items())
    return _versions(versions) + (f" ({named})" if named else "")


class Session(Protocol):
    """Use as a context manager: `with Session(Options(...)) as s: s.embed_text([...])`."""

    def __init__(self, options: Options = Options()):
        super().__init__(options)
        secure = credentials(options)
        self.channel = (grpc.secure_channel(options.address, secure, CHANNEL_OPTIONS) if secure
                        else grpc.insecure_channel(options.address, CHANNEL_OPTIONS))
        self._pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="predict")
        self._methods = {path: self.channel.unary_unary(path, request_serializer=_serialize,
                                                        response_deserializer=cls.FromString)
                         for path, cls in METHODS}

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown()
        self.channel.close()

    def call(self, path: str, request):
        """One RPC with the deadline; UNAVAILABLE is retried with jittered exponential back-off until the
        server answers or `wait` seconds have passed. The same request is sent again, so nothing doubles."""
        pause, give_up = self.options.backoff, time.monotonic() + self.options.wait
        while True:
            self._sent()
            try:
                response = self._methods[path](request, timeout=self.options.timeout)
            except grpc.RpcError as err:
                if (wait := self._retry_pause(err, pause, give_up)) is None:
                    raise self._explain(err) from None
                time.sleep(wait)
                pause = min(pause * 2, MAX_BACKOFF)
                continue
            self._back()
            return response

    def predict(self, signature: str, value: np.ndarray, output_filter: Sequence[str] = (),
                version: int | None = None) -> dict[str, np.ndarray]:
        return self.predict_versioned(signature, value, output_filter, version)[0]

    def predict_versioned(self, signature: str, value: np.ndarray, output_filter: Sequence[str] = (),
                          version: int | None = None) -> tuple[dict[str, np.ndarray], int]:
        """The outputs and the model version that computed them (`version`, when one is named)."""
        return self._answer(self.call(protos.PREDICT, self._request(signature, value, output_filter, version)))

    def embed_text(self, sentences: Sequence[str], version: int | None = None) -> np.ndarray:
        """[N, 512] embeddings of raw sentences (the server tokenises) by model `version`, `sentences_per_request`
        a request."""
        words = np.array([s.encode() for s in sentences], dtype=object)
        step = max(1, self.options.sentences_per_request)
        parts = self._pool.map(lambda i: self.predict(TEXT_SIGNATURE, words[i: i + step], (TEXT_OUTPUT,),
                                                      version)[TEXT_OUTPUT], range(0, len(words), step))
        return np.concatenate(list(parts))

    def embed_windows(self, frames: np.ndarray, version: int | None = None) -> np.ndarray:
        """[W, 512] embeddings of uint8 windows [W, T, H, W, 3], several per request, requests in parallel."""
        step = max(1, self.options.windows_per_request)
        chunks = (frames[i: i + step] for i in range(0, len(frames), step))
        return np.concatenate([embeddings for embeddings, _ in self.embed_batches(chunks, version)])

    def embed_batches(self, batches: Iterable[np.ndarray],
                      version: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
        """(embeddings, model version) of each request's uint8 windows, in order. Each batch is serialized
        here and dropped; at most `concurrency` requests are in flight and `batches` is read only as they
        finish, so memory holds that many requests however many windows stream through."""
        inflight: deque[Future] = deque()
        try:
            for batch in batches:
                request = self._video_request(batch, version)
                del batch
                inflight.append(self._pool.submit(self._embed, request))
                if len(inflight) >= max(1, self.options.concurrency):
                    yield inflight.popleft().result()
            while inflight:
                yield inflight.popleft().result()
        finally:
            for future in inflight:
                future.cancel()

    def _embed(self, request: bytes) -> tuple[np.ndarray, int]:
        outputs, version = self._answer(self.call(protos.PREDICT, request))
        return outputs["video_embedding"], version

    def preprocessing(self, version: int | None = None) -> dict[str, float] | None:
        """The clip sampling model `version` was trained with ({"frames", "fps", "size"}), read from its
        `preprocessing` signature; None when it has none (the hub module served as is, older exports)."""
        try:
            outputs, _ = self._answer(self.call(protos.PREDICT, self._preprocessing_request(version)))
        except ServerError as err:
            if err.code == grpc.StatusCode.FAILED_PRECONDITION:  # 'Serving signature key ... not found.'
                return None
            raise
        return self._sampling(outputs[PREPROCESSING_OUTPUT])

    def status(self) -> list[tuple[int, str, int, str]]:
        """(version, state, error code, error message) of every version the server knows."""
        return self._status_rows(self.call(protos.GET_MODEL_STATUS, self._status_request()))

    def metadata(self, version: int | None = None, label: str | None = None) -> tuple[int, Any]:
        """(version, SignatureDefMap) of `version`, of the version `label` names, or of the one the server would
        use."""
        return self._signatures(self.call(protos.GET_MODEL_METADATA, self._metadata_request(version, label)))

    def ensure_ready(self, version: int | None = None) -> int:
        """`version`, if it is AVAILABLE (VersionNotServed otherwise), or the newest AVAILABLE one; a ServerError
        saying what is wrong when none is."""
        return self._available(self.status(), version)

    def label(self, label: str) -> int | None:
        """The version `label` names on the server (None: no such label)."""
        try:
            response = self.call(protos.GET_MODEL_METADATA, self._metadata_request(label=label))
        except ServerError as err:
            return self._label(label, err)
        return self._label(label, response)

    def labels(self) -> dict[str, int]:
        """The labels of `LABELS` the server defines, and their versions."""
        return {label: version for label in LABELS if (version := self.label(label)) is not None}

    def default_version(self) -> int:
        """The version a new index (or a search of files) embeds with: `stable`'s, else the newest served."""
        stable = self.label(DEFAULT_LABEL)
        return self.ensure_ready(stable)


class Pinned:
    """A session whose every request names one model version: what the library's verbs are given, so that an
    index's videos and its queries are embedded by the version that made it, whatever else is served."""

    def __init__(self, session: Session, version: int):
        self.session, self.version = session, version

    @property
    def options(self) -> Options:
        return self.session.options

    @property
    def requests(self) -> int:
        return self.session.requests

    def ensure_ready(self) -> int:
        """This version, if it is AVAILABLE (VersionNotServed otherwise)."""
        return self.session.ensure_ready(self.version)

    def embed_text(self, sentences: Sequence[str]) -> np.ndarray:
        return self.session.embed_text(sentences, self.version)

    def embed_windows(self, frames: np.ndarray) -> np.ndarray:
        return self.session.embed_windows(frames, self.version)

    def embed_batches(self, batches: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, int]]:
        return self.session.embed_batches(batches, self.version)

    def preprocessing(self) -> dict[str, float] | None:
        return self.session.preprocessing(self.version)

    def __getattr__(self, name: str) -> object:
        """What does not embed (status, labels, metadata...) is the session's own."""
        return getattr(self.session, name)
