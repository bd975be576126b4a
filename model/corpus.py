"""`python -m model corpus OUT`: a small narrated world whose words compose, for training and the demo.

Events are colour x object x motion x place (4 x 3 x 4 x 4 = 192 describable events). A training video shows
several events in one place, and its subtitles narrate them the way HowTo100M narrations do: shifted by up to
`MAX_SHIFT` seconds, in varied phrasings, with lines unrelated to the picture ("welcome back") and some events
left unsaid. The held-out split has its own short one-event clips with one canonical query each
(`heldout/queries.csv`, `video_id,sentence`), and one long story video with events at known times
(`story/story.csv`, `video_id,start,end,text`) for moment search.

No TensorFlow here: numpy draws the frames and OpenCV writes VP8 WebM, which browsers play.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FPS = 10  # the videos' own frame rate
SIDE = 128  # pixels; the model samples them down to its own size
EVENT_SECONDS = 4.0
GAP_SECONDS = 1.0
MAX_SHIFT = 2.0  # narration lines start up to this many seconds before or after their event
HELDOUT = 32  # held-out clips, one query each
TRAIN_VIDEOS = 400  # enough variety that the tiny network learns the attributes rather than the videos
# The committed demo model: the tiny network trained on this world (`make demo-model`); `make demo` serves it.
DEMO_MODULE = Path(__file__).resolve().parent / "demo" / "s3d-demo-tiny"

COLOURS = {"red": (40, 40, 220), "blue": (220, 70, 30), "yellow": (0, 215, 250), "purple": (180, 40, 150)}  # BGR
OBJECTS = ("ball", "box", "triangle")
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
PLACES = ("field", "beach", "night", "snow")

# How narrators say each part; the first is the canonical phrase used by queries.
MOTION_WORDS = {"left": ("moving left", "going left", "sliding to the left"),
                "right": ("moving right", "going right", "sliding to the right"),
                "up": ("going up", "rising", "moving up"),
                "down": ("falling down", "dropping", "moving down")}
PLACE_WORDS = {"field": ("in a field", "on the grass"), "beach": ("on the beach", "by the sea"),
               "night": ("at night", "in the dark"), "snow": ("in the snow", "on the snow")}
TEMPLATES = ("a {c} {o} {m} {p}", "the {c} {o} is {m} {p}", "now a {c} {o} {m} {p}", "look, a {c} {o} {m} {p}",
             "{P} a {c} {o} {m}", "here we see a {c} {o} {m} {p}", "and then the {c} {o} is {m} {p}")
FILLERS = ("welcome back to the channel", "let's get started", "okay so", "don't forget to subscribe",
           "that's it for today", "thanks for watching", "alright let me show you something")


@dataclass(frozen=True)
class Event:
    colour: str
    shape: str
    motion: str
    place: str

    def canonical(self) -> str:
        return f"a {self.colour} {self.shape} {MOTION_WORDS[self.motion][0]} {PLACE_WORDS[self.place][0]}"

    def narrate(self, rng: np.random.Generator) -> str:
        place = str(rng.choice(PLACE_WORDS[self.place]))
        return str(rng.choice(TEMPLATES)).format(c=self.colour, o=self.shape, m=rng.choice(MOTION_WORDS[self.motion]),
                                                 p=place, P=place)


ALL_EVENTS = [Event(*e) for e in itertools.product(COLOURS, OBJECTS, MOTIONS, PLACES)]


def background(place: str, rng: np.random.Generator) -> np.ndarray:
    """One still background (BGR) with a little per-video variation."""
    img = np.zeros((SIDE, SIDE, 3), np.float32)
    horizon = int(SIDE * rng.uniform(0.35, 0.5))
    if place == "field":
        img[:horizon], img[horizon:] = (235, 206, 135), (40, 160, 60)
    elif place == "beach":
        sea = horizon + SIDE // 6
        img[:horizon], img[horizon:sea], img[sea:] = (235, 206, 135), (170, 110, 20), (140, 190, 225)
    elif place == "night":
        img[:] = (60, 25, 15)
        for x, y in rng.integers(0, SIDE, (12, 2)):
            img[y, x] = (230, 230, 230)
    else:  # snow
        img[:horizon], img[horizon:] = (200, 195, 190), (250, 250, 250)
    img += rng.normal(0, 4, (1, 1, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def draw(frame: np.ndarray, shape: str, colour: tuple[int, int, int], x: float, y: float, r: float) -> None:
    centre = (int(round(x)), int(round(y)))
    if shape == "ball":
        cv2.circle(frame, centre, int(r), colour, -1, cv2.LINE_AA)
    elif shape == "box":
        cv2.rectangle(frame, (int(x - r), int(y - r)), (int(x + r), int(y + r)), colour, -1, cv2.LINE_AA)
    else:
        points = np.array([(x, y - r * 1.15), (x - r * 1.1, y + r * 0.85), (x + r * 1.1, y + r * 0.85)], np.int32)
        cv2.fillPoly(frame, [points], colour, cv2.LINE_AA)


def event_frames(event: Event, still: np.ndarray, seconds: float, rng: np.random.Generator) -> list[np.ndarray]:
    """The event's frames: its object crossing the scene in its direction at a steady, jittered speed."""
    n = int(round(seconds * FPS))
    r = rng.uniform(12, 16)
    dx, dy = MOTIONS[event.motion]
    travel = rng.uniform(0.45, 0.6) * SIDE
    # Start so that the whole path stays on screen; the cross-axis position is random.
    along = rng.uniform(r + 4, SIDE - r - 4 - travel)
    across = rng.uniform(r + 4, SIDE - r - 4)
    start = np.array([along if dx > 0 else SIDE - along if dx < 0 else across,
                      along if dy > 0 else SIDE - along if dy < 0 else across])
    frames = []
    for i in range(n):
        x, y = start + np.array([dx, dy]) * travel * i / max(1, n - 1)
        frame = still.copy()
        draw(frame, event.shape, COLOURS[event.colour], x, y, r)
        frames.append(frame)
    return frames


@contextmanager
def stderr_silenced():
    """OpenCV's FFmpeg writer prints "tag ... is not supported" to fd 2 for VP8 in WebM, then writes it fine."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    with stderr_silenced():
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"VP80"), FPS, (SIDE, SIDE))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write VP8 WebM to {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()


def timeline(events: list[Event], place: str, rng: np.random.Generator, lead: float = 2.0
             ) -> tuple[list[np.ndarray], list[tuple[float, float, Event]]]:
    """Frames of a video showing `events` one after another (empty scene between), and each event's span."""
    still = background(place, rng)
    frames = [still.copy() for _ in range(int(lead * FPS))]
    spans = []
    for event in events:
        start = len(frames) / FPS
        frames += event_frames(event, still, EVENT_SECONDS, rng)
        spans.append((start, len(frames) / FPS, event))
        frames += [still.copy() for _ in range(int(GAP_SECONDS * FPS))]
    return frames, spans


def stamp(seconds: float, sep: str) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def write_subtitles(path: Path, lines: list[tuple[float, float, str]]) -> None:
    """SRT or WebVTT by the suffix."""
    vtt = path.suffix == ".vtt"
    sep = "." if vtt else ","
    numbers = ("" if vtt else f"{i}\n" for i in itertools.count(1))
    cues = [f"{n}{stamp(s, sep)} --> {stamp(e, sep)}\n{text}\n" for n, (s, e, text) in zip(numbers, sorted(lines))]
    path.write_text(("WEBVTT\n\n" if vtt else "") + "\n".join(cues))


def narration(spans: list[tuple[float, float, Event]], duration: float, rng: np.random.Generator
              ) -> list[tuple[float, float, str]]:
    """Weakly aligned lines: shifted, paraphrased, some events unsaid, some lines unrelated to the picture."""
    lines = []
    for start, end, event in spans:
        if rng.random() < 0.1:
            continue  # the narrator says nothing about this one
        begin = float(np.clip(start + rng.uniform(-MAX_SHIFT, MAX_SHIFT), 0, duration - 1))
        lines.append((begin, min(duration, begin + rng.uniform(2.5, 3.5)), event.narrate(rng)))
    for _ in range(rng.integers(1, 3)):
        begin = float(rng.uniform(0, duration - 2))
        lines.append((begin, begin + 1.5, str(rng.choice(FILLERS))))
    return lines


def write_corpus(out: Path, videos: int = TRAIN_VIDEOS, events_per_video: int = 4, heldout: int = HELDOUT,
                 story_events: int = 10, seed: int = 0) -> dict:
    """Write the corpus to `out` (which must not exist) through a temporary sibling; returns its summary.

    The held-out clips and the story depend only on `seed`, so `videos=0` writes just them (what the demo
    needs) and they are the same as in a full corpus of that seed."""
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new folder or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    rng = np.random.default_rng(seed)
    try:
        for sub in ("train", "heldout", "story"):
            (work / sub).mkdir()
        for v in range(videos):
            place = str(rng.choice(PLACES))
            events = [Event(str(rng.choice(list(COLOURS))), str(rng.choice(OBJECTS)), str(rng.choice(list(MOTIONS))),
                            place) for _ in range(events_per_video)]
            frames, spans = timeline(events, place, rng)
            write_video(work / "train" / f"v{v:03d}.webm", frames)
            suffix = ".vtt" if v % 4 == 3 else ".srt"  # both formats users have
            write_subtitles(work / "train" / f"v{v:03d}{suffix}", narration(spans, len(frames) / FPS, rng))
        rng = np.random.default_rng([seed, 1])  # its own stream: the same held-out split whatever `videos` is
        picks = [ALL_EVENTS[i] for i in rng.permutation(len(ALL_EVENTS))[: heldout + story_events]]
        with open(work / "heldout" / "queries.csv", "w", newline="") as f:
            rows = csv.writer(f)
            rows.writerow(["video_id", "sentence"])
            for h, event in enumerate(picks[:heldout]):
                frames, _ = timeline([event], event.place, rng, lead=0.5)
                write_video(work / "heldout" / f"h{h:02d}.webm", frames)
                rows.writerow([f"h{h:02d}", event.canonical()])
        story = picks[heldout:]
        frames, spans = [], []
        for place in PLACES:  # a few scenes, each with its own events
            part = [e for e in story if e.place == place]
            if part:
                offset = len(frames) / FPS
                more, found = timeline(part, place, rng, lead=1.0)
                frames += more
                spans += [(s + offset, e + offset, ev) for s, e, ev in found]
        write_video(work / "story" / "story.webm", frames)
        with open(work / "story" / "story.csv", "w", newline="") as f:
            rows = csv.writer(f)
            rows.writerow(["video_id", "start", "end", "text"])
            rows.writerows(["story", f"{s:.1f}", f"{e:.1f}", ev.canonical()] for s, e, ev in spans)
        summary = {"seed": seed, "videos": videos, "events_per_video": events_per_video, "heldout": heldout,
                   "story_events": len(spans), "story_seconds": len(frames) / FPS, "fps": FPS, "side": SIDE,
                   "describable_events": len(ALL_EVENTS), "max_shift_seconds": MAX_SHIFT}
        (work / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary
