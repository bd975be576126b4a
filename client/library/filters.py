"""Which videos a search may return: folders, a path pattern, durations. The folder index applies them to its
video numbers before ranking, vectorised over each segment's paths kept sorted (`Paths`): a folder or a pattern's
fixed head and tail is a range found by bisection, so a filter costs the videos it keeps, not a Python call per
video. A Milvus store turns them into an expression, then checks them exactly."""
from __future__ import annotations

import fnmatch
import os
import re
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WILD = re.compile(r"[*?\[\]]")  # fnmatch's special characters (a ']' alone is literal, but never trusted here)
LAST = "\U0010ffff"  # sorts after every character: prefix + LAST bounds every string that starts with prefix
PATTERNS = 16  # glob masks kept per path table (patterns that need fnmatch on their candidates)


def sort_orders(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The video numbers in the order of their paths, and of their paths read backwards (for suffixes)."""
    forward = sorted(range(len(paths)), key=paths.__getitem__)
    backward = sorted(range(len(paths)), key=lambda i: paths[i][::-1])
    return np.array(forward, np.int64), np.array(backward, np.int64)


class Paths:
    """A segment's video paths with their two sort orders: prefixes and suffixes as ranges."""

    def __init__(self, paths: Sequence[str], forward: np.ndarray, backward: np.ndarray):
        self.paths, self.forward, self.backward = paths, forward, backward
        self.lengths = np.fromiter(map(len, paths), np.int64, len(paths))
        self._globs: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # searches of one view run in threads (the page, AsyncClient)

    def starting(self, prefix: str) -> np.ndarray:
        """Numbers of the paths that start with `prefix`."""
        def at(x: str) -> int:
            return bisect_left(self.forward, x, key=lambda i: self.paths[int(i)])
        return self.forward[at(prefix): at(prefix + LAST)]

    def ending(self, suffix: str) -> np.ndarray:
        """Numbers of the paths that end with `suffix`."""
        def at(x: str) -> int:
            return bisect_left(self.backward, x, key=lambda i: self.paths[int(i)][::-1])
        return self.backward[at(suffix[::-1]): at(suffix[::-1] + LAST)]

    def mask(self, numbers: np.ndarray) -> np.ndarray:
        found = np.zeros(len(self.paths), bool)
        found[numbers] = True
        return found

    def matching(self, pattern: str) -> np.ndarray:
        """Mask of the paths `pattern` matches (fnmatch, case-sensitive): its fixed head and tail by bisection;
        a pattern with one `*` is then exact, any other is checked by fnmatch on those candidates only (and
        its mask kept for the next search with it)."""
        with self._lock:
            if pattern in self._globs:
                self._globs.move_to_end(pattern)
                return self._globs[pattern]
        if not WILD.search(pattern):  # no wildcard: the path itself
            same = self.starting(pattern)
            return self.mask(same[self.lengths[same] == len(pattern)])
        parts = WILD.split(pattern)
        head, tail = parts[0], parts[-1]
        found = self.mask(self.starting(head)) & self.mask(self.ending(tail))
        if pattern == f"{head}*{tail}":
            found &= self.lengths >= len(head) + len(tail)  # head and tail must not overlap
            return found
        match = re.compile(fnmatch.translate(pattern)).match
        for n in np.flatnonzero(found):
            found[n] = match(self.paths[int(n)]) is not None
        with self._lock:
            self._globs[pattern] = found
            if len(self._globs) > PATTERNS:
                self._globs.popitem(last=False)
        return found


@dataclass(frozen=True)
class Filters:
    """Which indexed videos a search may return. Applied before ranking, so they never return too few."""

    under: tuple[str, ...] = ()  # folders (any of them)
    glob: str | None = None  # fnmatch pattern on the whole path
    min_duration: float | None = None  # seconds
    max_duration: float | None = None

    def folders(self) -> list[str]:
        return [os.path.abspath(u).rstrip("/") + "/" for u in self.under]

    def accepts(self, path: str, duration: float) -> bool:
        folders = self.folders()
        return ((not folders or any(path.startswith(f) for f in folders))
                and (self.glob is None or fnmatch.fnmatchcase(path, self.glob))
                and (self.min_duration is None or duration >= self.min_duration)
                and (self.max_duration is None or duration <= self.max_duration))

    def select(self, paths: Paths, durations: np.ndarray) -> np.ndarray | None:
        """`accepts` for every video at once: a mask, or None when nothing is filtered."""
        if self == Filters():
            return None
        keep = np.ones(len(durations), bool)
        if self.under:
            keep = paths.mask(np.concatenate([paths.starting(f) for f in self.folders()]))
        if self.glob is not None:
            keep &= paths.matching(self.glob)
        if self.min_duration is not None:
            keep &= durations >= self.min_duration
        if self.max_duration is not None:
            keep &= durations <= self.max_duration
        return keep
