"""Training batches for MIL-NCE: a clip around a narration, and its bag of candidate narrations.

Frames come from the client's own sampler (`client.decode.video.sampled_frames`), so training sees exactly what
serving sees. Each video is decoded once into a memory-mapped uint8 cache file ([frames, size, size, 3] at the
training fps), so memory stays bounded by the batch, not by the data. The batch of step `s` is drawn from a
generator seeded by (seed, s): a resumed run sees the same clips in the same order.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s3d_retrieval.client.defaults import FPS, FRAMES, SIZE
from s3d_retrieval.client.files import atomic_write
from s3d_retrieval.client.decode.video import VideoError, pad, sampled_frames
from s3d_retrieval.model.narration import Line, NarratedVideo


@dataclass(frozen=True)
class ClipSampling:
    """What one training clip is: `frames` frames at `fps`, `size` x `size` (travels with the model)."""

    frames: int
    fps: float
    size: int


# Per network size: the tiny one trains on small clips (CPU-friendly), the full one on the serving defaults.
DEFAULT_SAMPLING = {"tiny": ClipSampling(16, FPS, 64), "full": ClipSampling(FRAMES, FPS, SIZE)}


class FrameCache:
    """Every sampled frame of a video, decoded once, memory-mapped on later use."""

    def __init__(self, folder: Path, sampling: ClipSampling):
        self.folder = folder
        self.sampling = sampling
        folder.mkdir(parents=True, exist_ok=True)

    def _key(self, path: Path) -> str:
        st = path.stat()
        s = self.sampling
        return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{s.fps}|{s.size}".encode()).hexdigest()

    def frames(self, path: Path) -> np.ndarray:
        """[N, size, size, 3] uint8, read-only memory map; raises VideoError for an unusable video."""
        key, side = self._key(path), self.sampling.size
        found = list(self.folder.glob(f"{key}-*.u8"))
        if not found:
            count = 0

            def write(f) -> None:
                nonlocal count
                for frame in sampled_frames(path, self.sampling.fps, side):  # streamed: no whole video in memory
                    f.write(np.ascontiguousarray(frame).tobytes())
                    count += 1

            tmp = self.folder / f"{key}.partial"
            atomic_write(tmp, write)
            found = [self.folder / f"{key}-{count}.u8"]
            os.replace(tmp, found[0])
        count = int(found[0].stem.rsplit("-", 1)[1])
        return np.memmap(found[0], np.uint8, "r", shape=(count, side, side, 3))


def bag(lines: tuple[Line, ...], i: int, k: int) -> list[str]:
    """Narration i and its k-1 nearest narrations in time (by centre); repeated when the video has fewer."""
    centre = lambda line: (line.start + line.end) / 2  # noqa: E731
    order = sorted(range(len(lines)), key=lambda j: (abs(centre(lines[j]) - centre(lines[i])), j))
    texts = [lines[j].text for j in order[:k]]
    return texts + [lines[i].text] * (k - len(texts))


def clip_at(frames: np.ndarray, centre: float, sampling: ClipSampling) -> np.ndarray:
    """`sampling.frames` frames centred on `centre` seconds, kept inside the video (short ones padded)."""
    length = sampling.frames
    if len(frames) < length:
        return pad(list(frames), length)
    first = int(round(centre * sampling.fps)) - length // 2
    first = min(max(first, 0), len(frames) - length)
    return np.asarray(frames[first: first + length])


@dataclass
class Batch:
    clips: np.ndarray  # [B, T, S, S, 3] uint8
    texts: list[str]  # B * K: clip b's bag is texts[b*K:(b+1)*K]


class Sampler:
    """Draws batch `step` deterministically: distinct videos, a narration in each, a clip around it, its bag."""

    def __init__(self, videos: list[NarratedVideo], frames: Callable[[Path], np.ndarray], sampling: ClipSampling,
                 candidates: int, seed: int):
        self.videos, self.frames, self.sampling = videos, frames, sampling
        self.candidates, self.seed = candidates, seed

    def batch(self, step: int, size: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        picks = rng.choice(len(self.videos), size, replace=len(self.videos) < size)
        clips, texts = [], []
        for v in picks:
            video = self.videos[v]
            i = int(rng.integers(len(video.lines)))
            line = video.lines[i]
            centre = rng.uniform(line.start, line.end)  # inside the narration's span
            clips.append(clip_at(self.frames(video.path), centre, self.sampling))
            texts += bag(video.lines, i, self.candidates)
        return Batch(np.stack(clips), texts)


def usable(videos: list[NarratedVideo], cache: FrameCache, log: Callable[[str], None]
           ) -> tuple[list[NarratedVideo], list[tuple[Path, str]]]:
    """Decode every video into the cache; corrupt or unreadable ones are named and left out."""
    good, bad = [], []
    for video in videos:
        try:
            cache.frames(video.path)
            good.append(video)
        except (VideoError, OSError) as err:
            bad.append((video.path, str(err).removeprefix(f"{video.path}: ")))
            log(f"skipped {video.path}: {bad[-1][1]}")
    return good, bad
