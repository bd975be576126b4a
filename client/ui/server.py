"""`s3d-client ui`: load the index, then serve the page and the API with uvicorn until interrupted."""
from __future__ import annotations

import functools
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from s3d_retrieval.client.api import Client, Where, stderr_note
from s3d_retrieval.client.defaults import MODEL_NAME, TIMEOUT
from s3d_retrieval.client.library.index import location
from s3d_retrieval.client.transport.session import ServerError
from s3d_retrieval.client.ui.app import create_app
from s3d_retrieval.client.ui.catalog import Catalog

PROBE_TIMEOUT = 2.0  # seconds: a health check answers within a probe's own timeout


def listen(host: str, port: int) -> socket.socket:
    """A listening socket: bound here so that a port in use is one clear line, and port 0 gets a free port."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=128)
    except OSError as err:
        why = os.strerror(err.errno) if err.errno else str(err)
        raise ValueError(f"cannot listen on {host}:{port} ({why}); pick another --port or "
                         f"--host, or stop what uses it") from None


def serve(index: Where, address: str | None, transport: dict, host: str, port: int, roots: list[Path] | None,
          check_every: float) -> int:
    """`index`: a folder, or a Milvus collection; `transport`: `Client`'s keywords (the CLI's global flags)."""
    catalog = Catalog(functools.partial(location(index).open, transport.get("model", MODEL_NAME), read_only=True,
                                        timeout=transport.get("timeout", TIMEOUT)), roots, check_every)
    try:
        return _serve(catalog, address, transport, host, port)
    finally:
        catalog.close()


def _serve(catalog: Catalog, address: str | None, transport: dict, host: str, port: int) -> int:
    snapshot = catalog.current()  # a missing or unreadable index stops here, with its message
    listener = listen(host, port)
    probing = {**transport, "timeout": PROBE_TIMEOUT, "wait": 0}
    with listener, Client(address, log=stderr_note, **transport) as client, Client(address, **probing) as probe:
        try:
            probe.ready()
        except ServerError as err:
            print(f"note: {err}; the page will say so until it answers", file=sys.stderr)
        shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
        print(f"serving {snapshot.view.videos} video(s) of {catalog.folder} at "
              f"http://{shown}:{listener.getsockname()[1]}/ (Ctrl-C stops)", file=sys.stderr)
        uvicorn.Server(uvicorn.Config(create_app(catalog, client, probe), log_level="warning")).run(
            sockets=[listener])
    return 0


@contextmanager
def in_thread(app: Starlette, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` from a thread on a free port and yield its base URL (tests, benchmarks). The socket listens
    before the server starts, so a first request waits in its backlog instead of being refused."""
    listener = listen(host, 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
