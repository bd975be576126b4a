"""What a training clip is, and where each step's clips come from: a clip around a narration, its bag of
candidate narrations, read from the video when it is drawn.

Frames come from the client's own sampler (`client.decode.video.sampled_frames`), so training sees exactly what
serving sees; a clip seeks to its first instant and decodes only its span, so nothing is decoded up front and
memory, disk and the time to the first step do not grow with the corpus. The clips of step `s` are planned by a
generator seeded by (seed, s): a resumed run, or any worker of a distributed one, draws the same ones.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s3d_retrieval.client.decode.video import VideoError, pad, sampled_frames
from s3d_retrieval.client.defaults import FPS, FRAMES, SIZE
from s3d_retrieval.model.narration import Line, NarratedVideo


@dataclass(frozen=True)
class ClipSampling:
    """What one training clip is: `frames` frames at `fps`, `size` x `size` (travels with the model)."""

    frames: int
    fps: float
    size: int


# How a step's clips are drawn, recorded with a run: a run resumes only on the plan it began with. 1 drew each clip
# around a random instant of its narration's span; 2 centres it on the narration.
PLAN = 2

# Per network size: the tiny one trains on small clips (CPU-friendly), the full one on the serving defaults.
DEFAULT_SAMPLING = {"tiny": ClipSampling(16, FPS, 64), "full": ClipSampling(FRAMES, FPS, SIZE)}


def read_clip(path: Path, first: int, sampling: ClipSampling) -> np.ndarray:
    """`sampling.frames` frames from sample instant `first` on ([T, S, S, 3] uint8), kept inside the video: a
    clip that would run past the end is moved back to end with it, a video shorter than a clip is padded."""
    length = sampling.frames

    def span(start: int) -> list[np.ndarray]:
        return list(itertools.islice(sampled_frames(path, sampling.fps, sampling.size, start), length))

    try:
        frames = span(first)
    except VideoError:
        if not first:
            raise
        frames = []  # the instant lies past the end (a narration that outlasts its video)
    if len(frames) < length and first:
        if frames:
            frames = span(max(0, first + len(frames) - length))
        else:  # how long the video is is unknown: keep its last frames, streaming
            frames = list(deque(sampled_frames(path, sampling.fps, sampling.size), maxlen=length))
    return np.stack(frames) if len(frames) == length else pad(frames, length)


def bag(lines: tuple[Line, ...], i: int, k: int) -> list[str]:
    """Narration i and its k-1 nearest narrations in time (by centre); repeated when the video has fewer."""
    centre = lambda line: (line.start + line.end) / 2  # noqa: E731
    order = sorted(range(len(lines)), key=lambda j: (abs(centre(lines[j]) - centre(lines[i])), j))
    texts = [lines[j].text for j in order[:k]]
    return texts + [lines[i].text] * (k - len(texts))


@dataclass(frozen=True)
class Draw:
    """One planned clip: which video, which narration, and the sample instant its clip starts at."""

    video: int
    line: int
    first: int


@dataclass
class Batch:
    clips: np.ndarray  # [B, T, S, S, 3] uint8
    texts: list[str]  # B * K: clip b's bag is texts[b*K:(b+1)*K]


class Plan:
    """Draws the clips of step `step` deterministically: distinct videos, a narration in each, the clip centred
    on it (drawn at a random instant of the narration's span, a clip could sit half outside what was said; see
    docs/how-to/train.md).

    A slot whose video cannot be read takes a replacement drawn from (seed, step, slot, attempt) among the
    videos the step did not plan, so what a step trains on depends on the data and (seed, step) only.
    """

    def __init__(self, videos: list[NarratedVideo], sampling: ClipSampling, candidates: int, seed: int):
        self.videos, self.sampling, self.candidates, self.seed = videos, sampling, candidates, seed

    def draws(self, step: int, size: int) -> list[Draw]:
        rng = np.random.default_rng([self.seed, step])
        picks = rng.choice(len(self.videos), size, replace=len(self.videos) < size)
        return [self._draw(rng, int(v)) for v in picks]

    def replacement(self, step: int, slot: int, attempt: int, planned: set[int]) -> Draw:
        rng = np.random.default_rng([self.seed, step, slot, attempt])
        video = int(rng.integers(len(self.videos)))
        for _ in range(64):  # the step's own videos are few: rejection ends fast unless it plans them all
            if video not in planned:
                break
            video = int(rng.integers(len(self.videos)))
        return self._draw(rng, video)

    def _draw(self, rng: np.random.Generator, v: int) -> Draw:
        lines = self.videos[v].lines
        i = int(rng.integers(len(lines)))
        centre = (lines[i].start + lines[i].end) / 2  # the narration's middle
        return Draw(v, i, max(0, int(round(centre * self.sampling.fps)) - self.sampling.frames // 2))

    def texts(self, draw: Draw) -> list[str]:
        return bag(self.videos[draw.video].lines, draw.line, self.candidates)

    def path(self, draw: Draw) -> Path:
        return self.videos[draw.video].path
