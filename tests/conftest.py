"""Shared fixtures: stand-in modules are written once per session and reused by every test."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

# pymilvus configures logging at import (logging.config.dictConfig), which closes every handler that exists then.
# TensorFlow's absl handler, made once TensorFlow is imported, closes its stream when closed, and in this process
# that stream is pytest's captured stderr: importing pymilvus after TensorFlow would break the capture. So first.
try:
    import pymilvus  # noqa: F401
except ImportError:  # the Milvus tests then say it; the rest runs
    pass

@pytest.fixture(scope="session")
def standin(tmp_path_factory) -> Callable[..., Path]:
    """standin(vocab_layout="asset", variables="resource", seed=0) -> path of a tiny stand-in module."""
    from s3d_retrieval.model.standin import write_standin

    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("standins")

    def get(vocab_layout: str = "asset", variables: str = "resource", seed: int = 0) -> Path:
        key = (vocab_layout, variables, seed)
        if key not in cache:
            cache[key] = write_standin(root / "-".join(map(str, key)), "tiny", seed, vocab_layout, variables)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def model_dir(standin, tmp_path_factory) -> Path:
    """The tiny stand-in exported as version 1 (warmup at small clips to keep the suite fast)."""
    from s3d_retrieval.client.defaults import MODEL_NAME
    from s3d_retrieval.export.pipeline import export_model

    path = tmp_path_factory.mktemp("served") / MODEL_NAME
    export_model(str(standin()), path, frames=8, size=64)
    return path


def start_server(model_dir: Path, port: int = 0, **options):
    """An embedded server on loopback, on free ports (or gRPC on `port`), polling fast."""
    from s3d_retrieval.client.defaults import MODEL_NAME
    from s3d_retrieval.serving import launcher
    from s3d_retrieval.serving.embedded.manager import LoadRetries
    from s3d_retrieval.serving.embedded.server import EmbeddedServer, Options

    plan = launcher.Plan(MODEL_NAME, model_dir, None, 0, 0, False, None)
    options = {"load_retries": LoadRetries(1, 0.05), **options}  # TF Serving's retries, without its minutes
    return EmbeddedServer(Options(models=launcher.model_server_config(plan), host="127.0.0.1", port=port, rest_port=0,
                                  metrics_path="/monitoring/prometheus/metrics", poll_seconds=0.1,
                                  **options)).start()


@pytest.fixture(scope="session")
def server(model_dir):
    srv = start_server(model_dir)
    yield srv
    srv.stop(grace=5)


@pytest.fixture()
def session(server):
    """A client session on the shared embedded server, every request naming its model version (1)."""
    from s3d_retrieval.client.transport.session import Options, Pinned, Session

    with Session(Options(address=f"127.0.0.1:{server.port}", windows_per_request=2)) as s:
        yield Pinned(s, 1)


def folder_catalog(folder: Path, roots: list[Path] | None = None, check_every: float = 1.0):
    """The search page's catalog over an index folder, opened for reading as `s3d-client ui --index` does."""
    from s3d_retrieval.client.defaults import MODEL_NAME
    from s3d_retrieval.client.library.index import Index
    from s3d_retrieval.client.ui.catalog import Catalog

    return Catalog(lambda: Index(folder, MODEL_NAME, read_only=True), roots, check_every)


def write_clip(path: Path, frames: int, fps: float, size: tuple[int, int] = (96, 72), fourcc: str = "FFV1",
               seed: int | None = None) -> Path:
    """A clip whose frame i is uniformly grey level i (or seeded noise): sampling can be checked exactly."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed) if seed is not None else None
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for i in range(frames):
        if rng is None:
            frame = np.full((size[1], size[0], 3), i % 256, np.uint8)
        else:
            frame = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        writer.write(frame)
    writer.release()
    return path


def files_of(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `folder` (hidden ones too): size, modification time and content hash. Two equal readings
    mean nothing was written, renamed, created or deleted in between."""
    import hashlib

    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def no_server_from_the_environment(monkeypatch):
    """A developer's $S3D_SERVER never redirects the suite: each test names its server, or sets the variable."""
    from s3d_retrieval.client.defaults import SERVER_ENV

    monkeypatch.delenv(SERVER_ENV, raising=False)
