"""A gRPC session with a TF Serving model: embeddings for sentences and video windows.

Channel options for large messages, an explicit deadline on every call, retries with exponential back-off on
UNAVAILABLE (servers restarting, pods rolling), optional TLS, `round_robin` over every address a name
resolves to (a Kubernetes headless Service), several windows per request and a bounded number of requests
in flight. Failures become one `ServerError` line that names the address and what to check.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from client.transport import protos
from client.defaults import (GRPC_PORT, INPUT_KEYS, MODEL_NAME, PREPROCESSING_OUTPUT, PREPROCESSING_SIGNATURE,
                             TEXT_OUTPUT, TEXT_SIGNATURE, VIDEO_SIGNATURE, VIDEO_UINT8_SIGNATURE)
from client.transport.tensors import to_numpy, to_proto

MAX_MESSAGE_BYTES = 2**31 - 1


class ServerError(Exception):
    """The server cannot be used (unreachable, not ready, model missing...); one line saying what to check."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


@dataclass
class Options:
    address: str = f"localhost:{GRPC_PORT}"
    model: str = MODEL_NAME
    timeout: float = 60.0  # seconds, per call
    retries: int = 4  # extra attempts on UNAVAILABLE
    backoff: float = 0.25  # first wait in seconds, doubled each retry
    tls: bool = False
    tls_ca: Path | None = None  # PEM roots; default: the system's
    windows_per_request: int = 4
    concurrency: int = 4  # requests in flight at once
    float_input: bool = False  # send float32 to `video` instead of uint8 to `video_uint8` (4x the bytes)


class Session:
    """Use as a context manager: `with Session(Options(...)) as s: s.embed_text([...])`."""

    def __init__(self, options: Options = Options()):
        self.options = options
        channel_options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                           ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                           ("grpc.lb_policy_name", "round_robin")]
        if options.tls or options.tls_ca:
            roots = options.tls_ca.read_bytes() if options.tls_ca else None
            self.channel = grpc.secure_channel(options.address, grpc.ssl_channel_credentials(roots), channel_options)
        else:
            self.channel = grpc.insecure_channel(options.address, channel_options)
        self._pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="predict")
        self.requests = 0  # RPCs sent (retries included): lets callers and tests see work that was skipped
        self._methods = {
            path: self.channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=cls.FromString)
            for path, cls in ((protos.PREDICT, protos.PredictResponse),
                              (protos.GET_MODEL_STATUS, protos.GetModelStatusResponse),
                              (protos.GET_MODEL_METADATA, protos.GetModelMetadataResponse))
        }

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown()
        self.channel.close()

    def _explain(self, err: grpc.RpcError) -> ServerError:
        address, model, code = self.options.address, self.options.model, err.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            message = (f"cannot reach the model server at {address} ({err.details()}); check that it is "
                       f"running (make serve) and the --server address")
        elif code == grpc.StatusCode.NOT_FOUND:
            message = (f"model '{model}' is not available at {address} ({err.details()}); check --model "
                       f"and that a version is exported and loaded (status)")
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message = (f"{address} did not answer within {self.options.timeout:g} s; raise --timeout or "
                       f"send fewer windows per request")
        else:
            message = f"{address} refused the request: {code.name}: {err.details()}"
        return ServerError(message, code)

    def call(self, path: str, request):
        """One RPC with the deadline, retrying UNAVAILABLE with exponential back-off."""
        wait = self.options.backoff
        for attempt in range(self.options.retries + 1):
            self.requests += 1
            try:
                return self._methods[path](request, timeout=self.options.timeout)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.options.retries:
                    raise self._explain(err) from None
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")

    def _spec(self, target, signature: str = "") -> None:
        target.name = self.options.model
        if signature:
            target.signature_name = signature

    def predict(self, signature: str, value: np.ndarray, output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        request = protos.PredictRequest()
        self._spec(request.model_spec, signature)
        request.inputs[INPUT_KEYS[signature]].CopyFrom(to_proto(value))
        request.output_filter.extend(output_filter)
        response = self.call(protos.PREDICT, request)
        outputs = {}
        for key, tensor in response.outputs.items():
            array = to_numpy(tensor)
            if array is None:
                raise ServerError(f"{self.options.address} sent an undecodable tensor for '{key}'")
            outputs[key] = array
        return outputs

    def embed_text(self, sentences: Sequence[str]) -> np.ndarray:
        """[N, 512] embeddings of raw sentences (the server tokenises)."""
        words = np.array([s.encode() for s in sentences], dtype=object)
        return self.predict(TEXT_SIGNATURE, words, (TEXT_OUTPUT,))[TEXT_OUTPUT]

    def embed_windows(self, frames: np.ndarray) -> np.ndarray:
        """[W, 512] embeddings of uint8 windows [W, T, H, W, 3], several per request, requests in parallel."""
        step = max(1, self.options.windows_per_request)
        if self.options.float_input:
            signature, convert = VIDEO_SIGNATURE, lambda x: x.astype(np.float32) / np.float32(255)
        else:
            signature, convert = VIDEO_UINT8_SIGNATURE, lambda x: x
        chunks = [frames[i: i + step] for i in range(0, len(frames), step)]
        results = self._pool.map(lambda c: self.predict(signature, convert(c), ("video_embedding",)), chunks)
        return np.concatenate([r["video_embedding"] for r in results])

    def preprocessing(self) -> dict[str, float] | None:
        """The clip sampling the served model was trained with ({"frames", "fps", "size"}), read from its
        `preprocessing` signature; None when it has none (the hub module served as is, older exports)."""
        names = ("frames", "fps", "size")
        try:
            values = self.predict(PREPROCESSING_SIGNATURE, np.array([n.encode() for n in names], dtype=object),
                                  (PREPROCESSING_OUTPUT,))[PREPROCESSING_OUTPUT]
        except ServerError as err:
            if err.code == grpc.StatusCode.FAILED_PRECONDITION:  # 'Serving signature key ... not found.'
                return None
            raise
        found = {n: float(v) for n, v in zip(names, values) if v > 0}
        return found if len(found) == len(names) else None

    def status(self) -> list[tuple[int, str, int, str]]:
        """(version, state, error code, error message) of every version the server knows."""
        request = protos.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self.call(protos.GET_MODEL_STATUS, request)
        return [(s.version, protos.STATE_NAMES.get(s.state, str(s.state)), s.status.error_code,
                 s.status.error_message) for s in response.model_version_status]

    def metadata(self) -> tuple[int, object]:
        """(version, SignatureDefMap) of the version the server would use."""
        request = protos.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        response = self.call(protos.GET_MODEL_METADATA, request)
        signatures = protos.SignatureDefMap()
        signatures.ParseFromString(response.metadata["signature_def"].value)
        return response.model_spec.version.value, signatures

    def ensure_ready(self) -> int:
        """The version that is AVAILABLE, or a ServerError saying what is wrong."""
        states = self.status()
        available = [v for v, state, _, _ in states if state == "AVAILABLE"]
        if not available:
            detail = "; ".join(f"version {v} {s}{': ' + m if m else ''}" for v, s, _, m in states)
            raise ServerError(f"model '{self.options.model}' at {self.options.address} is not ready ({detail})")
        return max(available)
