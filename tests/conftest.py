"""Shared fixtures: stand-in modules are written once per session and reused by every test."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def standin(tmp_path_factory) -> Callable[..., Path]:
    """standin(vocab_layout="asset", variables="resource", seed=0) -> path of a tiny stand-in module."""
    from model.standin import write_standin

    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("standins")

    def get(vocab_layout: str = "asset", variables: str = "resource", seed: int = 0) -> Path:
        key = (vocab_layout, variables, seed)
        if key not in cache:
            cache[key] = write_standin(root / "-".join(map(str, key)), "tiny", seed, vocab_layout, variables)
        return cache[key]

    return get
