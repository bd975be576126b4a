"""Errors with TF Serving's gRPC codes and its message rules."""
from __future__ import annotations

import grpc

MAX_MESSAGE = 1024


class ServingError(Exception):
    """A request failure carried to the client as a gRPC status (or the REST equivalent)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        if len(message) > MAX_MESSAGE:  # TF Serving cuts long messages the same way
            message = message[:MAX_MESSAGE] + "...TRUNCATED"
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def from_tf(err) -> ServingError:
    """A TensorFlow OpError: its error code numbers are gRPC's."""
    code = next((c for c in grpc.StatusCode if c.value[0] == err.error_code), grpc.StatusCode.UNKNOWN)
    return ServingError(code, err.message)
