"""Narrated videos from the formats users have: subtitles beside videos, HowTo100M caption CSVs, one CSV.

- a folder of videos, each with a same-stem `.srt` or `.vtt` beside it;
- a folder with `captions/<video stem>.csv` files (`start,end,text`, as the released MIL-NCE code reads
  HowTo100M's), the videos anywhere else under the folder;
- one CSV `video,start,end,text`, `video` a path relative to the CSV's folder or a file stem under it.

Subtitles are parsed with pysubs2 (SRT and WebVTT, tags stripped). It is lenient: a cue whose timing line is
broken is folded into the previous cue's text, so every line with `-->` is also checked here and a bad one is
reported with its line number rather than trained on.
"""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pysubs2

from s3d_retrieval.client.library.walk import VIDEO_SUFFIXES

SUBTITLE_SUFFIXES = (".srt", ".vtt")
_TIME = r"(?:\d+:)?\d{1,2}:\d{2}[,.]\d{1,3}"
TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s.*)?$")


class DataError(Exception):
    """Training data that cannot be used as given; one line naming the file (and line) and what to do."""


@dataclass(frozen=True)
class Line:
    start: float  # seconds
    end: float
    text: str


@dataclass(frozen=True)
class NarratedVideo:
    path: Path
    lines: tuple[Line, ...]  # sorted by start


@dataclass
class Dataset:
    videos: list[NarratedVideo]
    unnarrated: list[Path]  # videos found without any narration (skipped)
    missing: list[str] = field(default_factory=list)  # videos a CSV names that do not exist (skipped)


def _check_timings(path: Path, raw: str) -> None:
    for number, text in enumerate(raw.splitlines(), start=1):
        if "-->" in text and not TIMING.match(text):
            raise DataError(f"{path}:{number}: malformed cue timing {text.strip()!r}; expected "
                            f"HH:MM:SS,mmm --> HH:MM:SS,mmm (fix or remove that cue)")


def read_subtitles(path: Path) -> list[Line]:
    """Cues of an SRT or WebVTT file, as plain text with times in seconds."""
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text; re-save the subtitles as UTF-8") from None
    _check_timings(path, raw)
    try:
        subs = pysubs2.SSAFile.from_string(raw, format_="vtt" if path.suffix.lower() == ".vtt" else "srt")
    except Exception as err:  # noqa: BLE001 - pysubs2 raises several kinds for unreadable files
        raise DataError(f"{path}: cannot be parsed as subtitles ({err}); check the file") from None
    lines = [Line(e.start / 1000, e.end / 1000, " ".join(e.plaintext.split())) for e in subs]
    return [line for line in lines if line.text and line.end > line.start]


def read_caption_csv(path: Path, columns: tuple[str, ...] = ("start", "end", "text")) -> list[dict[str, str]]:
    """Rows of a CSV that must have `columns` (others ignored); a bad row names its line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = set(columns) - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{path}:1: missing column(s) {', '.join(sorted(missing))}; "
                                f"the header must name {','.join(columns)}")
            rows = []
            for row in reader:
                values = {c: (row.get(c) or "").strip() for c in columns}
                for c in ("start", "end"):
                    if c in values:
                        try:
                            float(values[c])
                        except ValueError:
                            raise DataError(f"{path}:{reader.line_num}: {c} {values[c]!r} is not a number "
                                            f"of seconds") from None
                rows.append(values)
            return rows
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; re-save it as UTF-8") from None
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None


def _lines(rows: list[dict[str, str]]) -> list[Line]:
    lines = [Line(float(r["start"]), float(r["end"]), " ".join(r["text"].split())) for r in rows]
    return [line for line in lines if line.text and line.end > line.start]


def _videos_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def _dataset(found: dict[Path, list[Line]], videos: list[Path], where: Path, how: str) -> Dataset:
    narrated = [NarratedVideo(p, tuple(sorted(found[p], key=lambda x: (x.start, x.end)))) for p in videos if found.get(p)]
    if not narrated:
        raise DataError(f"{where}: no narrated videos found; {how}")
    return Dataset(narrated, [p for p in videos if not found.get(p)])


def read_dataset(data: Path) -> Dataset:
    """The narrated videos under `data` (a folder or a CSV file), with the ones lacking narration listed."""
    if data.is_file():
        return _from_csv(data)
    if not data.is_dir():
        raise DataError(f"{data}: no such folder or file; pass a folder of videos with subtitles, a folder "
                        f"with captions/, or a CSV video,start,end,text")
    captions = data / "captions"
    if captions.is_dir():
        videos = [p for p in _videos_under(data) if captions not in p.parents]
        by_stem = {p.stem: p for p in videos}
        found: dict[Path, list[Line]] = {}
        for csv_file in sorted(captions.glob("*.csv")):
            if csv_file.stem in by_stem:
                found[by_stem[csv_file.stem]] = _lines(read_caption_csv(csv_file))
        return _dataset(found, videos, data, "each video needs captions/<its stem>.csv (start,end,text)")
    videos = _videos_under(data)
    found = {}
    for video in videos:
        for suffix in SUBTITLE_SUFFIXES:
            subtitle = video.with_suffix(suffix)
            if subtitle.is_file():
                found[video] = read_subtitles(subtitle)
                break
    return _dataset(found, videos, data, "each video needs a same-stem .srt or .vtt beside it "
                                         "(or use a captions/ folder, or a CSV video,start,end,text)")


def _from_csv(path: Path) -> Dataset:
    rows = read_caption_csv(path, ("video", "start", "end", "text"))
    root = path.parent
    stems = None
    grouped: dict[Path, list[dict[str, str]]] = defaultdict(list)
    missing: set[str] = set()
    for row in rows:
        video = root / row["video"]
        if not video.is_file():
            if stems is None:
                stems = {p.stem: p for p in _videos_under(root)}
            if row["video"] not in stems:
                missing.add(row["video"])
                continue
            video = stems[row["video"]]
        grouped[video].append(row)
    if missing and not grouped:
        raise DataError(f"{path}: none of its videos exist under {root} (e.g. {sorted(missing)[0]!r})")
    found = {video: _lines(rs) for video, rs in grouped.items()}
    dataset = _dataset(found, sorted(found), path, "every row needs a video, start < end and text")
    dataset.missing = sorted(missing)
    return dataset
