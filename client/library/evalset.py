"""Labelled query sets: which sentence should find which clip.

Two CSV layouts, told apart by their header (other columns, such as MSR-VTT's `key,vid_key` or YouCook2's
`task`, are ignored):
- MSR-VTT style `video_id,sentence`: the clip is the whole video, several sentences per video allowed;
- YouCook2 style `video_id,start,end,text`: the clip is the annotated span of its video.
The video of `video_id` is the file under the root whose stem is `video_id` (any video extension).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from s3d_retrieval.client.library.walk import VIDEO_SUFFIXES
from s3d_retrieval.client.errors import Error


class EvalSetError(Error):
    """A query file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Clip:
    video: str  # path
    start: float | None = None  # seconds; None: the whole video
    end: float | None = None


@dataclass
class EvalSet:
    clips: list[Clip]
    sentences: list[str]
    truth: list[int]  # sentence i describes clips[truth[i]]
    excluded: list[str] = field(default_factory=list)  # video ids with no file under the root
    segments: bool = False  # clips are spans of videos (moment metrics apply)


def find_videos(root: Path) -> dict[str, Path]:
    """Video files under `root` by stem (the `video_id` of the CSVs)."""
    return {p.stem: p for p in sorted(root.rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()}


def load_evalset(path: Path, root: Path) -> EvalSet:
    """Read either layout; a malformed row names the file and line, a missing video is excluded once."""
    if not path.is_file():
        raise EvalSetError(f"{path}: no such file")
    if not root.is_dir():
        raise EvalSetError(f"{root}: no such folder; --videos takes the folder the videos are under")
    videos = find_videos(root)
    out = EvalSet([], [], [])
    index: dict[Clip, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = set(reader.fieldnames or ())
            if {"video_id", "start", "end", "text"} <= header:
                out.segments, text_column = True, "text"
            elif {"video_id", "sentence"} <= header:
                text_column = "sentence"
            else:
                raise EvalSetError(f"{path}:1: the header must name video_id,sentence (MSR-VTT style) or "
                                   f"video_id,start,end,text (YouCook2 style)")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                video, text = (row.get("video_id") or "").strip(), " ".join((row.get(text_column) or "").split())
                if not video or not text:
                    raise EvalSetError(f"{where}: empty video_id or {text_column}")
                start = end = None
                if out.segments:
                    try:
                        start, end = float(row["start"]), float(row["end"])
                    except (TypeError, ValueError):
                        raise EvalSetError(f"{where}: start and end must be seconds, got {row['start']!r}, "
                                           f"{row['end']!r}") from None
                    if not 0 <= start < end:
                        raise EvalSetError(f"{where}: the span {start:g}-{end:g} s is empty or negative")
                if video not in videos:
                    out.excluded += [video] if video not in out.excluded else []
                    continue
                clip = Clip(str(videos[video].resolve()), start, end)
                if clip not in index:
                    index[clip] = len(out.clips)
                    out.clips.append(clip)
                out.sentences.append(text)
                out.truth.append(index[clip])
    except (UnicodeDecodeError, csv.Error) as err:
        raise EvalSetError(f"{path}: not a readable UTF-8 CSV ({err})") from None
    if not out.sentences:
        raise EvalSetError(f"{path}: no row has a video under {root}"
                           + (f" (e.g. {out.excluded[0]!r} is missing)" if out.excluded else ""))
    return out


def read_sentences(path: Path, root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(video path, sentence) per row of a `video_id,sentence` CSV, and the ids with no video under `root`."""
    found = load_evalset(path, root)
    return [(found.clips[t].video, s) for s, t in zip(found.sentences, found.truth)], found.excluded
