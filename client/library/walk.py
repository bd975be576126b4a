"""Which files an `index` run considers: the paths given, folders walked for video files, never a crash.

Everything the walk cannot use is named once with the reason instead of raising: broken symbolic links,
symbolic-link loops, folders that cannot be listed, names that are not valid UTF-8 (the index and its JSON
store text), special files (FIFOs, devices) named like videos. Symbolic links to files and folders are
followed; a folder reached twice (a loop, or two links to one place) is walked once. Each file also gets a
key, its path relative to the root it was found under (its name for a file given as such): the same on every
machine whatever the mount point, which is what `Shard` hashes.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".gif", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv"}


@dataclass
class Found:
    files: list[str] = field(default_factory=list)  # absolute paths, in walk order, each once
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path as printable text, why)
    keys: dict[str, str] = field(default_factory=dict)  # path -> path relative to its root


@dataclass(frozen=True)
class Shard:
    """Share `index` of `count` (`--shard I/N`): a file belongs to the share its key's hash falls in."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard {text!r}: write I/N, e.g. 0/8 (share I of N, counted from 0)") from None
        if not 0 <= index < count:
            raise ValueError(f"--shard {text!r}: I must be at least 0 and below N")
        return cls(index, count)

    def owns(self, key: str) -> bool:
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


def printable(path: str) -> str:
    """A path as text that can always be printed (undecodable bytes shown as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _valid_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # os gives undecodable bytes as lone surrogates
        return False
    return True


def _why_unusable(path: str, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symbolic link loop"
    if err.errno == errno.ENOENT:
        return "broken symbolic link (its target does not exist)" if os.path.islink(path) else "no such file"
    return f"cannot be read ({err.strerror})"


def _has_video_suffix(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES


def walk(paths: Iterable[str | Path]) -> Found:
    """Files as given (any suffix), folders searched recursively for video files, in sorted order."""
    found, seen_files, seen_dirs = Found(), set(), set()

    def skip(path: str, why: str) -> None:
        found.skipped.append((printable(path), why))

    def consider(path: str, explicit: bool, root: str) -> None:
        if not _valid_utf8(path):
            return skip(path, "the name is not valid UTF-8; rename the file to index it")
        try:
            info = os.stat(path)
        except OSError as err:
            return skip(path, _why_unusable(path, err))
        if stat.S_ISDIR(info.st_mode):
            return descend(path, info, path if explicit else root)
        if not (explicit or _has_video_suffix(path)):
            return None
        if not stat.S_ISREG(info.st_mode):
            return skip(path, "not a regular file (a FIFO, socket or device)")
        if path not in seen_files:
            seen_files.add(path)
            found.files.append(path)
            found.keys[path] = os.path.relpath(path, root).replace(os.sep, "/")
        return None

    def descend(folder: str, info: os.stat_result, root: str) -> None:
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs:
            if os.path.islink(folder):
                skip(folder, "symbolic link to a folder already walked (a loop, or a second link to it)")
            return
        seen_dirs.add(key)
        try:
            names = sorted(os.listdir(folder))
        except OSError as err:
            return skip(folder, f"folder cannot be listed ({err.strerror})")
        for name in names:
            consider(os.path.join(folder, name), False, root)

    for path in paths:
        absolute = os.path.abspath(os.fspath(path))
        consider(absolute, True, os.path.dirname(absolute))
    return found
