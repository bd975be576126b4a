"""REST front end on TF Serving's paths: predict (row `instances` and columnar `inputs`), model status,
metadata, and the Prometheus metrics page."""
from __future__ import annotations

import base64
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from s3d_retrieval.client.transport.tensors import DTYPES, to_numpy, to_proto
from s3d_retrieval.serving.embedded.api import SIGNATURE_DEF, Api
from s3d_retrieval.serving.embedded.errors import ServingError, invalid
from s3d_retrieval.serving.embedded.servable import DEFAULT_KEY

MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                        r"(?P<verb>:predict|/metadata)?$")
HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
               grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
               grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
               grpc.StatusCode.DEADLINE_EXCEEDED: 504}


def _named(model_spec, spec: dict) -> None:
    """A ModelSpec from the path's name and its version or label (`/versions/N`, `/labels/L`)."""
    model_spec.name = spec["name"]
    if spec.get("version"):
        model_spec.version.value = int(spec["version"])
    elif spec.get("label"):
        model_spec.version_label = spec["label"]


def _decode(value, dtype: int) -> np.ndarray:
    """JSON value -> array of the signature's dtype (strings may be {"b64": ...})."""
    np_type = DTYPES[dtype][0]
    if np_type is object:
        def leaf(v):
            if isinstance(v, list):
                return [leaf(x) for x in v]
            return base64.b64decode(v["b64"]) if isinstance(v, dict) else str(v).encode()

        decoded = leaf(value)
        array = np.empty(np.shape(decoded) if isinstance(decoded, list) else (), dtype=object)
        array[...] = decoded
        return array
    return np.asarray(value, dtype=np_type)


def _encode(array: np.ndarray | None):
    assert array is not None, "the server's own outputs are tensors TensorFlow reads"
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(array).tolist()
    return array.tolist()


def predict_request(body: dict, spec: dict, signatures: dict) -> tuple[predict_pb2.PredictRequest, bool]:
    """A PredictRequest from a REST body; also whether the body was in row (`instances`) form."""
    request = predict_pb2.PredictRequest()
    _named(request.model_spec, spec)
    request.model_spec.signature_name = body.get("signature_name", "")
    key = request.model_spec.signature_name or DEFAULT_KEY
    if key not in signatures:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
    inputs = signatures[key].inputs
    rows = "instances" in body
    if rows == ("inputs" in body):
        raise invalid('JSON body must have exactly one of "instances" (row format) or "inputs" (columnar format)')
    data = body["instances" if rows else "inputs"]
    if rows:
        named = bool(data) and all(isinstance(i, dict) and "b64" not in i for i in data)
        columns = {k: [i[k] for i in data] for k in inputs} if named else {next(iter(inputs)): data}
    else:
        columns = data if isinstance(data, dict) else {next(iter(inputs)): data}
    for alias, value in columns.items():
        if alias not in inputs:
            raise invalid(f"input {alias} is not in signature {key}; it takes {sorted(inputs)}")
        request.inputs[alias].CopyFrom(to_proto(_decode(value, inputs[alias].dtype), tensor_pb2.TensorProto))
    return request, rows


def predict_body(response: predict_pb2.PredictResponse, rows: bool) -> dict:
    outputs = {k: _encode(to_numpy(v)) for k, v in response.outputs.items()}
    if not rows:
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values()))}
    batch = len(next(iter(outputs.values())))
    return {"predictions": [{k: v[i] for k, v in outputs.items()} for i in range(batch)]}


def make_handler(api: Api, metrics_path: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # access logs would drown the server's own log
            pass

        def _send(self, status: int, body: str, kind: str = "application/json") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _json(self, status: int, payload: dict) -> None:
            self._send(status, json.dumps(payload))

        def _route(self, method: str) -> None:
            if method == "GET" and metrics_path and self.path == metrics_path:
                return self._send(200, api.metrics.render(), "text/plain; version=0.0.4")
            if not self.path.lower().startswith("/v1/"):  # outside TF Serving's REST API: not counted
                return self._json(404, {"error": f"Not found: {method} {self.path}"})
            match = MODEL_PATH.match(self.path)
            model = match["name"] if match else ""
            verb = "predict" if method == "POST" and match and match["verb"] == ":predict" else ""
            start, status = time.perf_counter(), "OK"
            try:
                code, payload = 200, self._answer(method, match)
            except ServingError as err:
                status = err.code.name
                code, payload = HTTP_STATUS.get(err.code, 500), {"error": err.message}
            finally:  # every REST request counts, its latency only when it succeeded (TF Serving's http_server);
                # counted before the answer leaves, so whoever has the answer finds it counted
                api.metrics.request(model, verb, "REST", status, time.perf_counter() - start)
            self._json(code, payload)

        def _answer(self, method: str, match: re.Match | None) -> dict:
            if not match or (method == "POST") != (match["verb"] == ":predict"):
                raise invalid(f"Malformed request: {method} {self.path}")
            spec = {"name": match["name"], "version": match["version"], "label": match["label"]}
            if method == "POST":
                return self._predict(spec)
            model_spec = {"name": spec["name"], **({"version": spec["version"]} if spec["version"] else {}),
                          **({"version_label": spec["label"]} if spec["label"] else {})}
            if match["verb"] == "/metadata":
                request = json_format.ParseDict({"model_spec": model_spec, "metadata_field": [SIGNATURE_DEF]},
                                                get_model_metadata_pb2.GetModelMetadataRequest())
                response = api.metadata(request)
            else:
                request = json_format.ParseDict({"model_spec": model_spec},
                                                get_model_status_pb2.GetModelStatusRequest())
                response = api.status(request)
            return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=True)

        def _predict(self, spec: dict) -> dict:
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            except json.JSONDecodeError as err:
                raise invalid(f"JSON Parse error: {err}") from None
            if not isinstance(body, dict):
                raise invalid("JSON body must be an object")
            probe = predict_pb2.PredictRequest()
            _named(probe.model_spec, spec)
            with api.manager.servable(probe.model_spec) as servable:
                try:
                    request, rows = predict_request(body, spec, servable.signatures)
                except (ValueError, TypeError, KeyError) as err:
                    raise invalid(f"JSON value does not match the signature's inputs: {err}") from None
            return predict_body(api.predict(request), rows)

        def do_GET(self):  # noqa: N802
            self._route("GET")

        def do_POST(self):  # noqa: N802
            self._route("POST")

    return Handler


class RestServer:
    def __init__(self, api: Api, host: str, port: int, metrics_path: str | None):
        self.httpd = ThreadingHTTPServer((host, port), make_handler(api, metrics_path))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
