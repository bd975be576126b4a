"""Which videos a search may return: folders, a path pattern, durations. The folder index applies them to its
video numbers before ranking; a Milvus store turns them into an expression, then checks them exactly."""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Filters:
    """Which indexed videos a search may return. Applied before ranking, so they never return too few."""

    under: tuple[str, ...] = ()  # folders (any of them)
    glob: str | None = None  # fnmatch pattern on the whole path
    min_duration: float | None = None  # seconds
    max_duration: float | None = None

    def accepts(self, path: str, duration: float) -> bool:
        folders = [os.path.abspath(u).rstrip("/") + "/" for u in self.under]
        return ((not folders or any(path.startswith(f) for f in folders))
                and (self.glob is None or fnmatch.fnmatchcase(path, self.glob))
                and (self.min_duration is None or duration >= self.min_duration)
                and (self.max_duration is None or duration <= self.max_duration))

    def predicate(self) -> Callable[[str, float], bool] | None:
        """`accepts`, or None when nothing is filtered."""
        return None if self == Filters() else self.accepts
