"""Decode a video file into the model's input windows with OpenCV (any format OpenCV reads).

Two samplings:
- `colab`: the official TF Hub colab's loader: the first `frames` frames at the file's own rate, centre
  square crop, resize, BGR -> RGB; a shorter video has each frame repeated in place (f0,f0,f1,f1,...).
- `segments` (default): frames at `fps` (10) by the file's own timestamps, cut into windows of `frames`
  (32 = 3.2 s) every `stride` seconds over the whole video, the last window aligned to the end; each window
  carries its start and end in seconds. Only frames that land on a sampling instant are converted
  (`grab` skips the others); windows stream out of a rolling buffer, so long videos need little memory.
Frames stay uint8 RGB (0..255): the exported `video_uint8` signature divides by 255 in the graph.
"""
from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # our VideoError says it once; FFmpeg's own log is noise
import cv2  # noqa: E402 - reads the variable above when it loads
import numpy as np  # noqa: E402

from s3d_retrieval.client.defaults import FPS, FRAMES, SIZE  # noqa: E402
from s3d_retrieval.client.errors import Error  # noqa: E402

FALLBACK_FPS = 25.0  # when a file states no usable frame rate
# Containers such as WebM keep timestamps in whole milliseconds: a frame stamped 0.067 s of a 30 fps file really
# starts at 0.0667 and is gone by 0.1. A sample instant within this much of a frame's end belongs to the next one.
TIMESTAMP_SLACK = 1e-3


class VideoError(Error):
    """A video that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class Sampling:
    """How frames are taken from a video; recorded with every index so queries and index agree."""

    mode: str = "segments"  # or "colab"
    frames: int = FRAMES
    fps: float = FPS
    size: int = SIZE
    stride: float = FRAMES / FPS  # seconds between window starts (segments)

    def __post_init__(self):
        if self.mode not in ("segments", "colab"):
            raise ValueError(f"sampling mode must be 'segments' or 'colab', not {self.mode!r}")
        if self.frames < 2 or self.frames % 2 or self.size < 32 or self.size % 2:
            raise ValueError("frames and size must be even, frames >= 2 and size >= 32 (the network's limits)")
        if self.fps <= 0 or self.stride <= 0:
            raise ValueError("fps and stride must be positive")


def model_sampling(served: Mapping[str, float] | None, mode: str = "segments", frames: int | None = None,
                   fps: float | None = None, size: int | None = None, stride: float | None = None) -> Sampling:
    """Values given explicitly win; then the served model's own sampling (`Session.preprocessing`, the
    preprocessing config that travels with the model); then the released model's defaults."""
    base = served or {"frames": FRAMES, "fps": FPS, "size": SIZE}
    frames, fps, size = frames or int(base["frames"]), fps or float(base["fps"]), size or int(base["size"])
    return Sampling(mode=mode, frames=frames, fps=fps, size=size, stride=stride or frames / fps)


@dataclass
class Window:
    start: float  # seconds
    end: float
    frames: np.ndarray = field(repr=False)  # [T, size, size, 3] uint8 RGB


def square(frame: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop of a BGR frame, resized (bilinear) to size x size, as RGB."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = h // 2 - side // 2, w // 2 - side // 2
    crop = frame[top: top + side, left: left + side]
    return cv2.cvtColor(cv2.resize(crop, (size, size)), cv2.COLOR_BGR2RGB)


def pad(frames: list[np.ndarray], count: int) -> np.ndarray:
    """Exactly `count` frames: a short list has each frame repeated in place, then is cut (the colab's rule)."""
    stacked = np.stack(frames)
    if len(stacked) < count:
        stacked = np.repeat(stacked, math.ceil(count / len(stacked)), axis=0)
    return stacked[:count]


class Capture:
    """cv2.VideoCapture with errors that name the file, and timestamps that are trusted only if sane."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if not Path(path).is_file():
            raise VideoError(f"{path}: no such file")
        self.cap = cv2.VideoCapture(self.path)
        if not self.cap.isOpened():
            raise VideoError(f"{path}: cannot be opened as a video (unsupported format or corrupt file)")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if math.isfinite(fps) and 0 < fps < 1000 else FALLBACK_FPS
        self.index = -1
        self._last = -1.0
        self._by_index = False

    def grab(self) -> float | None:
        """Advance one frame; its time in seconds, or None at the end."""
        if not self.cap.grab():
            return None
        self.index += 1
        t = self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if self._by_index or not math.isfinite(t) or t < self._last or (self.index > 0 and t == self._last):
            self._by_index = True  # no usable timestamps (some GIFs, raw streams): use the frame rate
            t = self.index / self.fps
        self._last = t
        return t

    def retrieve(self) -> np.ndarray:
        ok, frame = self.cap.retrieve()
        if not ok or frame is None:
            raise VideoError(f"{self.path}: frame {self.index} cannot be decoded (corrupt file?)")
        return frame

    def seek(self, seconds: float) -> None:
        """Go to the frame on screen at `seconds` (or just before it); the next `grab` returns it."""
        self.cap.set(cv2.CAP_PROP_POS_MSEC, max(0.0, seconds) * 1000)
        self.index = int(self.cap.get(cv2.CAP_PROP_POS_FRAMES)) - 1
        self._last = -1.0

    def frame_at(self, seconds: float) -> np.ndarray | None:
        """The BGR frame shown at `seconds` (a seek: for thumbnails, not for sampling)."""
        self.cap.set(cv2.CAP_PROP_POS_MSEC, seconds * 1000)
        ok, frame = self.cap.read()
        return frame if ok else None

    def close(self) -> None:
        self.cap.release()


def colab_windows(path: str | Path, sampling: Sampling) -> Iterator[Window]:
    cap = Capture(path)
    try:
        frames: list[np.ndarray] = []
        while len(frames) < sampling.frames and cap.grab() is not None:
            frames.append(square(cap.retrieve(), sampling.size))
    finally:
        cap.close()
    if not frames:
        raise VideoError(f"{path}: no frames could be decoded")
    yield Window(0.0, len(frames) / cap.fps, pad(frames, sampling.frames))


def sampled_frames(path: str | Path, fps: float, size: int, first: int = 0) -> Iterator[np.ndarray]:
    """Frame k of the result is the one on screen at (first + k) / fps seconds (by the file's timestamps), as
    RGB size x size. Only frames that land on a sampling instant are converted; the others are skipped. A
    `first` past the start seeks there (the decoder starts from the keyframe before it, not from the start)."""
    interval = 1.0 / fps
    cap = Capture(path)
    sampled = first  # sample k stands for time k * interval
    try:
        if first:
            cap.seek(first * interval - 0.5 / cap.fps)
        while (t := cap.grab()) is not None:
            # This frame is on screen from t until the next one: it is every sample k with k*interval in there.
            until = t + 1.0 / cap.fps
            count = 0
            while (sampled + count) * interval < until - TIMESTAMP_SLACK:
                count += 1
            if not count:
                continue
            frame = square(cap.retrieve(), size)
            for _ in range(count):
                yield frame
            sampled += count
    finally:
        cap.close()
    if sampled == first:
        raise VideoError(f"{path}: no frames could be decoded" + (f" from {first * interval:g} s" if first else ""))


def segment_windows(path: str | Path, sampling: Sampling) -> Iterator[Window]:
    interval, length = 1.0 / sampling.fps, sampling.frames
    stride = max(1, round(sampling.stride * sampling.fps))
    buffer: deque[np.ndarray] = deque(maxlen=length)
    sampled = 0
    emitted_end = 0
    for frame in sampled_frames(path, sampling.fps, sampling.size):
        buffer.append(frame)
        sampled += 1
        if sampled >= length and (sampled - length) % stride == 0:
            emitted_end = sampled
            yield Window((sampled - length) * interval, sampled * interval, np.stack(buffer))
    if sampled < length:
        yield Window(0.0, sampled * interval, pad(list(buffer), length))
    elif emitted_end < sampled:  # the tail the stride skipped: one more window, aligned to the end
        yield Window((sampled - length) * interval, sampled * interval, np.stack(buffer))


def windows(path: str | Path, sampling: Sampling = Sampling()) -> Iterator[Window]:
    """The model's input windows of one video, in time order."""
    reader = colab_windows if sampling.mode == "colab" else segment_windows
    return reader(path, sampling)


def load(path: str | Path, sampling: Sampling = Sampling()) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """All windows of a video at once: frames [W, T, size, size, 3] uint8 and their (start, end) seconds."""
    found = list(windows(path, sampling))
    return np.stack([w.frames for w in found]), [(w.start, w.end) for w in found]
