"""Talking to Milvus: one client per store, every failure as one line, and expressions built safely.

Note: importing pymilvus runs `logging.config.dictConfig`, which closes the logging handlers that exist then; the
client imports it before any of its own (tests import it before TensorFlow's, see conftest).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any

from s3d_retrieval.client.library.store import StoreError

PAGE = 4096  # rows fetched per page of a query
TOP_K = 16384  # the most rows Milvus returns for one query or search
STRONG = {"consistency_level": "Strong"}  # reads see every write acknowledged before them
OPEN_LITE: Counter[str] = Counter()  # stores of this process open on each URI (a Lite file's server is shared)


class MilvusError(StoreError):
    """The Milvus store cannot be used (unreachable, a bad URI, another model's collection); one line."""


def why(err: Exception) -> str:
    return str(getattr(err, "message", None) or err).splitlines()[0][:300]


def connect(uri: str, timeout: float) -> Any:
    """A pymilvus `MilvusClient` (typed Any: pymilvus is an optional extra), counted for `release`."""
    try:
        from pymilvus import MilvusClient
    except ImportError as err:
        raise MilvusError(f"--milvus needs pymilvus ({err}): pip install 's3d-retrieval[milvus]'") from None
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # its own tracebacks and warnings: ours say it in a line
    if not (uri.endswith(".db") or uri.startswith(("http://", "https://", "tcp://"))):
        raise MilvusError(f"--milvus {uri!r}: give a Milvus Lite file ending in .db or a server's "
                          f"http://HOST:19530")
    try:
        client = MilvusClient(uri=uri, timeout=timeout)
    except Exception as err:  # pymilvus raises MilvusException, and others from its transport
        raise MilvusError(f"cannot open Milvus at {uri} ({why(err)}); check the URI and that the server "
                          f"runs") from None
    OPEN_LITE[lite_key(uri)] += 1
    return client


def lite_key(uri: str) -> str:
    """How Milvus Lite names the server it starts for a file (its absolute path)."""
    return os.path.abspath(uri) if uri.endswith(".db") else uri


def release(client: Any, uri: str) -> None:
    """Close the connection; for a Lite file that no other store of this process still uses, stop the server
    pymilvus started for it too, so the file is free for the next process (Lite keeps it locked)."""
    key = lite_key(uri)
    OPEN_LITE[key] -= 1
    try:
        client.close()
    except Exception:  # closing a connection that broke: nothing left to keep
        pass
    if uri.endswith(".db") and not OPEN_LITE[key]:
        try:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(key)
        except Exception:  # no Lite here
            pass


def literal(text: str) -> str:
    """A string as a Milvus expression literal (quotes and backslashes escaped; other characters as they are)."""
    return json.dumps(text, ensure_ascii=False)


def starts_with(prefix: str) -> str:
    """A LIKE literal for the strings that start with `prefix`, or with its part before a backslash: LIKE's `%`
    and `_` are escaped (a folder named `x_y` matches no `xzy`); an escaped backslash is not read alike by every
    Milvus (Lite's growing segments refuse it), so a backslash ends the prefix and callers check exactly after."""
    head = prefix.split("\\", 1)[0]
    return literal(head.replace("%", "\\%").replace("_", "\\_") + "%")


def one_of(field: str, values: list[str]) -> str:
    """`field in [...]` over string values."""
    return f"{field} in [" + ", ".join(map(literal, values)) + "]"
