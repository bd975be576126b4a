"""TF Serving model versions: numbered child folders of a model's base path, published atomically.

`MODEL_DIR/<version>/` (TF Serving's layout; `python -m export` writes the next number, never over one):
- `saved_model.pb`, `variables/`, `assets/` (the vocabulary, when the module keeps it as a file): the SavedModel,
  tag `serve`, with the signatures of the served-signatures reference;
- `assets.extra/tf_serving_warmup_requests`: PredictionLog records TF Serving replays when it loads the version;
- `assets.extra/manifest.json`: what the version is: its source (handle, path, format), the TensorFlow that
  exported it, the signatures with dtypes and shapes, the input contract, the preprocessing the model was trained
  with (also answered by the `preprocessing` signature), and the parity measured against the source.

A version is staged under a temporary name beside the others and renamed into place once verified: TF Serving,
which polls the base path, never sees half of one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from s3d_retrieval.export.source import ExportError


def versions(model_dir: Path) -> list[int]:
    """Version numbers present (TF Serving ignores non-numeric children such as our temp folders)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def choose_version(model_dir: Path, requested: int | None) -> int:
    """The requested version if free, else the next integer after those present."""
    if requested is None:
        return max(versions(model_dir), default=0) + 1
    if requested < 1:
        raise ExportError(f"--version {requested}: versions are positive integers")
    if (model_dir / str(requested)).exists():
        raise ExportError(f"{model_dir / str(requested)} already exists; versions are never overwritten, "
                          f"omit --version to take the next one ({max(versions(model_dir)) + 1})")
    return requested


def staging_dir(model_dir: Path) -> Path:
    """A fresh non-numeric folder beside the versions, on the same file system so rename is atomic."""
    model_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))


def publish(staged: Path, model_dir: Path, version: int) -> Path:
    """Rename the verified export into place; fails rather than replace a version that appeared meanwhile."""
    target = model_dir / str(version)
    try:
        os.rename(staged, target)  # refuses a non-empty existing target
    except OSError as err:
        raise ExportError(f"cannot publish {target}: {err.strerror}; nothing was overwritten") from None
    return target
