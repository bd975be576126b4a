"""The `eval` verb: retrieval quality on a labelled set, the way the field reports it (reference §5).

reader (`client.library.evalset`) -> clip windows by protocol -> embeddings (any TF Serving) -> the full query x clip
score matrix -> text->video and video->text R@1/5/10, median and mean rank; for segment sets, moment metrics
(each query searched inside its whole video: its best moment's span, and the best window's alone, against the
annotated one).

Protocols, named in the output:
- `max`: every window of the clip (stride = one window, the last aligned to the clip's end); a clip scores as
  its best window, which is what `search` does;
- `mean`: `windows` windows spread uniformly over the clip, their embeddings averaged (the MIL-NCE evaluation);
- `colab`: one window, the first frames (the official colab: the first 32 frames of the file at its own rate;
  for a segment, the first `frames` samples from its start).
Decoding streams: each video is read once per pass, and only the windows asked for are kept.
"""
from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from s3d_retrieval.client.library.evalset import Clip, EvalSet
from s3d_retrieval.client.library.store import Store
from s3d_retrieval.client.library.indexing import index_videos
from s3d_retrieval.client.library.metrics import iou, moment_summary, ranks, summary
from s3d_retrieval.client.library.moments import find, inside
from s3d_retrieval.client.library.rank import Windows, best_per_video
from s3d_retrieval.client.library.search import embed_videos
from s3d_retrieval.client.transport.session import Pinned
from s3d_retrieval.client.decode.video import (Capture, Sampling, VideoError, colab_windows, model_sampling, pad,
                                               sampled_frames, segment_windows)

PROTOCOLS = ("max", "mean", "colab")


@dataclass
class Evaluation:
    queries: int
    videos: int
    excluded: list[str]
    protocol: dict
    text_to_video: dict[str, float]
    video_to_text: dict[str, float]
    moments: dict[str, float] | None  # the best moment (`client.library.moments`) against the annotation
    best_window: dict[str, float] | None  # the best window alone: what moments add
    text_ranks: np.ndarray  # per query, for the report
    scores: np.ndarray  # [queries, clips]
    sentences: list[str]
    clips: list[Clip]
    truth: list[int]

    def as_json(self) -> dict:
        return {"queries": self.queries, "videos": self.videos, "excluded": self.excluded, "protocol": self.protocol,
                "text_to_video": self.text_to_video, "video_to_text": self.video_to_text, "moments": self.moments,
                "best_window": self.best_window}


def duration(path: str, fps: float) -> float:
    """Seconds of video: the container's frame count when it states one, else a counting pass."""
    cap = Capture(path)
    try:
        count = cap.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if math.isfinite(count) and count > 0:
            return count / cap.fps
        while cap.grab() is not None:
            pass
        return (cap.index + 1) / cap.fps
    finally:
        cap.close()


def windows_at(path: str, starts: list[int], sampling: Sampling) -> list[np.ndarray]:
    """Windows of `sampling.frames` samples beginning at these sample indices, in the order asked, streamed
    through a rolling buffer; a start past the end gives the last full window (a short video is padded)."""
    length = sampling.frames
    wanted = sorted(set(max(0, s) for s in starts))
    found: dict[int, np.ndarray] = {}
    buffer: deque[np.ndarray] = deque(maxlen=length)
    seen = 0
    for frame in sampled_frames(path, sampling.fps, sampling.size):
        buffer.append(frame)
        seen += 1
        while wanted and wanted[0] == seen - length:
            found[wanted.pop(0)] = np.stack(buffer)
        if not wanted:
            break
    tail = np.stack(buffer) if seen >= length else pad(list(buffer), length)
    return [found.get(max(0, s), tail) for s in starts]


def clip_starts(clip: Clip, protocol: str, sampling: Sampling, count: int, seconds: float) -> list[int]:
    """Sample indices where the protocol's windows of `clip` begin (the clip spans 0..seconds if whole)."""
    start = clip.start or 0.0
    end = clip.end if clip.end is not None else seconds
    first, last = round(start * sampling.fps), max(round(start * sampling.fps), round(end * sampling.fps) - sampling.frames)
    if protocol == "colab":
        return [first]
    if protocol == "mean":
        return [round(x) for x in np.linspace(first, last, count)]
    return sorted(set(range(first, last, sampling.frames)) | {last})


def embed_clips(session: Pinned, evalset: EvalSet, protocol: str, sampling: Sampling, count: int,
                errors: list[tuple[str, str]]) -> list[np.ndarray | None]:
    """Per clip, its window embeddings [W, D] (mean: one averaged row); None for a clip that failed."""
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(evalset.clips):
        by_video[clip.video].append(i)
    out: list[np.ndarray | None] = [None] * len(evalset.clips)
    for video, members in by_video.items():
        try:
            if not evalset.segments and protocol != "mean":  # a whole video: the same windows `search` takes
                reader = colab_windows if protocol == "colab" else segment_windows
                frames = [w.frames for w in reader(video, replace(sampling, mode="colab" if protocol == "colab"
                                                                   else "segments"))]
                groups = [(members[0], frames)]
            else:
                seconds = 0.0 if evalset.segments else duration(video, sampling.fps)
                starts = {i: clip_starts(evalset.clips[i], protocol, sampling, count, seconds) for i in members}
                frames = windows_at(video, [s for i in members for s in starts[i]], sampling)
                groups, at = [], 0
                for i in members:
                    groups.append((i, frames[at: at + len(starts[i])]))
                    at += len(starts[i])
        except VideoError as err:
            errors.append((video, str(err).removeprefix(f"{video}: ")))
            continue
        for i, windows in groups:
            embeddings = session.embed_windows(np.stack(windows))
            out[i] = embeddings.mean(axis=0, keepdims=True) if protocol == "mean" else embeddings
    return out


def from_index(index: Store, evalset: EvalSet) -> tuple[list[np.ndarray | None], Windows]:
    """Per clip, the index's windows inside it (centre within the span; the nearest one if none is)."""
    windows = index.windows(sorted({clip.video for clip in evalset.clips}))
    out: list[np.ndarray | None] = []
    for clip in evalset.clips:
        rows = windows.rows(clip.video)
        if len(rows) == 0:
            out.append(None)
            continue
        if clip.start is not None and clip.end is not None:
            rows = rows[inside(windows.spans[rows], clip.start, clip.end)]
        out.append(np.asarray(windows.embeddings[rows]))
    return out, windows


def moments(text: np.ndarray, evalset: EvalSet, windows: Windows) -> tuple[dict[str, float], dict[str, float]]:
    """Each segment's sentence searched inside its whole video: IoU with the annotation of the best moment, and
    of the best window alone."""
    found, annotated = [], []
    for sentence, t in zip(text, evalset.truth):
        clip = evalset.clips[t]
        rows = windows.rows(clip.video)
        best = find(windows.embeddings[rows], windows.spans[rows], sentence)[0] if len(rows) else None
        found.append([(best.start, best.end), best.window] if best else [(0.0, 0.0)] * 2)
        annotated.append((clip.start, clip.end))
    spans, truth = np.array(found), np.array(annotated, np.float64)
    return moment_summary(iou(spans[:, 0], truth)), moment_summary(iou(spans[:, 1], truth))


def clip_scores(text: np.ndarray, per_clip: list[np.ndarray]) -> np.ndarray:
    """[queries, clips]: each clip scoring as its best window (its one row under `mean`), as `search` ranks."""
    owner = np.concatenate([np.full(len(e), n) for n, e in enumerate(per_clip)])
    scores, _ = best_per_video(text @ np.concatenate(per_clip).T, owner)
    return scores


def evaluate(session: Pinned, evalset: EvalSet, protocol: str = "max", count: int = 10,
             sampling: Sampling | None = None, index: Store | None = None,
             errors: list[tuple[str, str]] | None = None, add: bool = True) -> Evaluation:
    """Score every sentence against every clip and summarise, the way the field reports retrieval. With `index`,
    its windows (the videos it lacks embedded into it first, unless `add` is False: then they are refused).
    `sampling` defaults to the one the model was trained with."""
    errors = [] if errors is None else errors
    whole: Windows | None = None
    if index is not None:
        if protocol != "max":
            raise ValueError("--index holds every window of each video: use it with --protocol max")
        if add:
            errors += index_videos(session, index, sorted({c.video for c in evalset.clips})).failed
        sampling = index.sampling
        per_clip, whole = from_index(index, evalset)
        lacking = sorted({c.video for c, found in zip(evalset.clips, per_clip) if found is None})
        if lacking and not add:
            raise ValueError(f"{index.where} lacks {len(lacking)} video(s) of the labelled set ({lacking[0]}"
                             f"{', ...' if len(lacking) > 1 else ''}): index them into it first")
    else:
        sampling = sampling or model_sampling(session.preprocessing())
        per_clip = embed_clips(session, evalset, protocol, sampling, count, errors)
    keep = [i for i, e in enumerate(per_clip) if e is not None]
    embedded = [e for e in per_clip if e is not None]
    if not keep:
        raise ValueError("no clip could be embedded: " + "; ".join(f"{v}: {why}" for v, why in errors[:3]))
    renumber = {old: new for new, old in enumerate(keep)}
    queries = [(s, renumber[t]) for s, t in zip(evalset.sentences, evalset.truth) if t in renumber]
    text = session.embed_text([s for s, _ in queries])
    scores = clip_scores(text, embedded)
    truth = np.array([t for _, t in queries])
    mask = np.zeros(scores.shape, bool)
    mask[np.arange(len(truth)), truth] = True
    text_ranks = ranks(scores, truth)
    moment_figures = window_figures = None
    if evalset.segments:
        kept = replace(evalset, clips=[evalset.clips[i] for i in keep], truth=list(truth),
                       sentences=[s for s, _ in queries])
        if whole is None:
            whole = embed_videos(session, sorted({c.video for c in kept.clips}), sampling, errors)
        moment_figures, window_figures = moments(text, kept, whole)
    return Evaluation(
        queries=len(queries), videos=len(keep), excluded=list(evalset.excluded),
        protocol={"name": protocol, "windows": count if protocol == "mean" else None, "frames": sampling.frames,
                  "fps": sampling.fps, "size": sampling.size},
        text_to_video=summary(text_ranks), video_to_text=summary(ranks(scores.T, mask.T)),
        moments=moment_figures, best_window=window_figures, text_ranks=text_ranks, scores=scores, sentences=[s for s, _ in queries],
        clips=[evalset.clips[i] for i in keep], truth=list(truth))


def worst(evaluation: Evaluation, count: int = 5) -> Iterator[tuple[str, int, list[tuple[Clip, float]]]]:
    """The queries ranked worst: (sentence, rank of its clip, top 3 clips with scores)."""
    for q in np.argsort(-evaluation.text_ranks, kind="stable")[:count]:
        top = np.argsort(-evaluation.scores[q], kind="stable")[:3]
        yield (evaluation.sentences[q], int(evaluation.text_ranks[q]),
               [(evaluation.clips[c], float(evaluation.scores[q, c])) for c in top])


def clip_name(clip: Clip) -> str:
    name = Path(clip.video).name
    return name if clip.start is None else f"{name} {clip.start:g}-{clip.end:g} s"
