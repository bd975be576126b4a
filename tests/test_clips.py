"""Training clips as they are drawn: a clip read by seeking is the clip of the whole decode, each step's clips
depend only on (seed, step), each worker reads only its share, readers decode a bounded number of steps ahead,
and an unreadable video is named once, counted and replaced the same way whatever was met before."""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from s3d_retrieval.client.decode.video import VideoError, pad, sampled_frames
from s3d_retrieval.model.clips import ClipSampling, Plan, read_clip
from s3d_retrieval.model.narration import Line, NarratedVideo
from s3d_retrieval.model import readers
from s3d_retrieval.model.readers import ClipReader
from tests.conftest import write_clip

SAMPLING = ClipSampling(frames=8, fps=10, size=32)


def whole_decode_clip(path: Path, first: int, sampling: ClipSampling) -> np.ndarray:
    """What a clip starting at sample `first` is, from every frame of the video: kept inside it."""
    frames = np.stack(list(sampled_frames(path, sampling.fps, sampling.size)))
    first = min(first, len(frames) - sampling.frames)
    return frames[first: first + sampling.frames]


@pytest.mark.parametrize("fourcc,suffix,fps", [("VP80", "webm", 30), ("mp4v", "mp4", 25), ("MJPG", "avi", 7.5)])
def test_a_clip_read_by_seeking_is_the_clip_of_the_whole_decode(tmp_path, fourcc, suffix, fps):
    # Noise frames: a clip one frame early or late differs everywhere. WebM keeps millisecond timestamps, which a
    # 30 fps file cannot hit exactly.
    path = write_clip(tmp_path / f"clip.{suffix}", int(6 * fps), fps, fourcc=fourcc, seed=3)
    samples = len(list(sampled_frames(path, SAMPLING.fps, SAMPLING.size)))
    for first in (0, 1, 7, 23, samples - SAMPLING.frames, samples - 3, samples + 40):  # the last two run past the end
        np.testing.assert_array_equal(read_clip(path, first, SAMPLING), whole_decode_clip(path, first, SAMPLING),
                                      err_msg=f"first sample {first} of {samples}")


def test_a_clip_decodes_only_its_span_not_the_video_before_it(tmp_path, monkeypatch):
    from s3d_retrieval.client.decode import video

    path = write_clip(tmp_path / "long.avi", 600, 25, fourcc="MJPG", seed=5)  # 24 s; every frame a keyframe
    grabbed = []
    grab = video.Capture.grab
    monkeypatch.setattr(video.Capture, "grab", lambda self: grabbed.append(1) or grab(self))
    clip = read_clip(path, 200, SAMPLING)  # 20 s in: 8 samples at 10 fps span 0.8 s, 20 frames at 25 fps
    assert len(grabbed) <= 25, len(grabbed)  # not the 500 frames before it
    np.testing.assert_array_equal(clip, whole_decode_clip(path, 200, SAMPLING))


def test_the_optional_cache_cuts_the_clips_reading_by_seeking_gives(tmp_path):
    from s3d_retrieval.model.readers import FrameCache

    paths = [write_clip(tmp_path / f"v{i}.webm", 60, 30, fourcc="VP80", seed=i) for i in range(10)]
    short = write_clip(tmp_path / "short.avi", 5, 10, seed=9)
    one_video = len(list(sampled_frames(paths[0], SAMPLING.fps, SAMPLING.size))) * 32 * 32 * 3
    cache = FrameCache(limit=8 * one_video)  # room for 8 of the 10: the least recently used go
    for first in (0, 5, 13, 400):
        for path in [short, *paths]:
            np.testing.assert_array_equal(cache.read(path, first, SAMPLING), read_clip(path, first, SAMPLING))
    assert list(cache._videos) == paths[2:] and cache._bytes <= cache.limit
    tiny = FrameCache(limit=8 * 32 * 32 * 3 * 8)  # a video of more than one clip's frames is never kept
    np.testing.assert_array_equal(tiny.read(paths[0], 3, SAMPLING), read_clip(paths[0], 3, SAMPLING))
    assert not tiny._videos and paths[0] in tiny._seeking


def test_with_the_cache_a_corrupt_frame_fails_only_the_clips_that_span_it(tmp_path, monkeypatch):
    from s3d_retrieval.model import clips, readers
    from s3d_retrieval.model.readers import FrameCache

    path = write_clip(tmp_path / "v.webm", 90, 30, fourcc="VP80", seed=1)  # 30 samples at 10 fps
    decodes: list[str] = []

    def corrupt_at_sample_12(how: str):
        def frames(path, fps, size, first=0):
            decodes.append(how)
            for k, frame in enumerate(sampled_frames(path, fps, size, first), first):
                if k == 12:
                    raise VideoError(f"{path}: frame 36 cannot be decoded (corrupt file?)")
                yield frame
        return frames

    monkeypatch.setattr(clips, "sampled_frames", corrupt_at_sample_12("seeking"))
    monkeypatch.setattr(readers, "sampled_frames", corrupt_at_sample_12("whole"))
    cache = FrameCache(limit=2**30)
    for first in (3, 0, 20):  # before the bad frame, and after it
        np.testing.assert_array_equal(cache.read(path, first, SAMPLING), read_clip(path, first, SAMPLING),
                                      err_msg=f"first sample {first}")
    with pytest.raises(VideoError, match="frame 36"):  # a clip that spans it
        cache.read(path, 8, SAMPLING)
    assert decodes.count("whole") == 1 and not cache._videos  # not decoded whole again


def test_a_video_shorter_than_a_clip_is_padded(tmp_path):
    path = write_clip(tmp_path / "short.avi", 5, 10, seed=4)
    frames = list(sampled_frames(path, SAMPLING.fps, SAMPLING.size))
    assert len(frames) == 5
    np.testing.assert_array_equal(read_clip(path, 3, SAMPLING), pad(frames, 8))  # f0 f0 f1 f1 f2 f2 f3 f3


def narrated(count: int, folder: Path = Path("/corpus")) -> list[NarratedVideo]:
    return [NarratedVideo(folder / f"v{i:03}.webm", tuple(Line(4.0 * j, 4.0 * j + 2, f"video {i} line {j}")
                                                          for j in range(5))) for i in range(count)]


class FakeDecoder:
    """Stands in for `read_clip`: a clip whose pixels encode (video number, first sample); counts its calls and
    fails for the videos named bad."""

    def __init__(self, bad: set[str] = frozenset()):
        self.bad, self.calls, self.lock = bad, [], threading.Lock()

    def __call__(self, path: Path, first: int, sampling: ClipSampling) -> np.ndarray:
        with self.lock:
            self.calls.append((path.name, first))
        if path.name in self.bad:
            raise VideoError(f"{path}: cannot be opened as a video (unsupported format or corrupt file)")
        clip = np.zeros((sampling.frames, 2, 2, 3), np.int32)
        clip[..., 0], clip[..., 1] = int(path.stem[1:]), first
        return clip


class FailingDecoder(FakeDecoder):
    """A FakeDecoder whose read of a video fails with `error` when `fails(name, first, names met before)` says so."""

    def __init__(self, fails: Callable[[str, int, set[str]], bool], error: str):
        super().__init__()
        self.fails, self.error = fails, error

    def __call__(self, path: Path, first: int, sampling: ClipSampling) -> np.ndarray:
        if self.fails(path.name, first, {call[0] for call in self.calls}):
            self.calls.append((path.name, first))
            raise VideoError(f"{path}: {self.error}")
        return super().__call__(path, first, sampling)


def read(videos, batch, steps, share=(0, 1), readers=2, decoder=None, log=None) -> list:
    plan = Plan(videos, SAMPLING, candidates=2, seed=11)
    reader = ClipReader(plan, batch, readers, share=share, log=log or (lambda _: None), read=decoder or FakeDecoder())
    return [(b.clips[:, 0, 0, 0, :2].tolist(), b.texts) for b in reader.batches(*steps)]


def test_the_clips_of_a_step_depend_only_on_seed_and_step():
    videos = narrated(40)
    whole = read(videos, 8, (0, 6))
    assert read(videos, 8, (3, 6)) == whole[3:]  # a resumed run reads what the uninterrupted one did
    assert read(videos, 8, (0, 6), readers=5) == whole  # however many readers
    for clips, texts in whole:
        assert len({video for video, _ in clips}) == 8  # distinct videos: no clip is another's false negative
        for (video, first), (text, _) in zip(clips, zip(texts[::2], texts[1::2])):
            line = int(text.split()[-1])
            assert text.startswith(f"video {video} ")  # a clip's bag is its own video's narration...
            # ...and the clip is centred on it, to the nearest sample (docs/how-to/train.md: a clip drawn anywhere in
            # the narration's span learned less per step)
            assert abs((first + SAMPLING.frames // 2) / SAMPLING.fps - (4.0 * line + 1)) <= 0.5 / SAMPLING.fps + 1e-9
    assert whole[0] != whole[1]


def test_each_worker_reads_only_its_share_of_the_global_batch():
    videos = narrated(40)
    whole = read(videos, 8, (0, 3))
    decoders = [FakeDecoder(), FakeDecoder()]
    shares = [read(videos, 8, (0, 3), share=(w, 2), decoder=decoders[w]) for w in (0, 1)]
    for step, (clips, texts) in enumerate(whole):
        assert shares[0][step][0] + shares[1][step][0] == clips and shares[0][step][1] + shares[1][step][1] == texts
    assert len(decoders[0].calls) == len(decoders[1].calls) == 3 * 4  # half of each step's clips each
    assert not {c[0] for c in decoders[0].calls[:4]} & {c[0] for c in decoders[1].calls[:4]}


class InlineExecutor:
    """Runs each read when it is submitted: the clips decoded are then exactly the clips the reader asked for, with
    no reader thread still on its way."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:
            future.set_exception(err)
        return future


def test_readers_decode_a_bounded_number_of_steps_ahead(monkeypatch):
    monkeypatch.setattr(readers, "ThreadPoolExecutor", InlineExecutor)
    decoder = FakeDecoder()
    plan = Plan(narrated(1000), SAMPLING, candidates=2, seed=11)
    reader = ClipReader(plan, 4, readers=2, prefetch=2, read=decoder)
    batches = reader.batches(0, 100)
    next(batches)
    assert len(decoder.calls) == 3 * 4  # the step taken and two ahead, not the corpus nor the run
    next(batches)
    assert len(decoder.calls) == 4 * 4  # one more step ahead for each step taken
    batches.close()


def test_an_unreadable_video_is_named_once_counted_and_replaced_the_same_way_whatever_came_before():
    videos = narrated(12)
    clean = read(videos, 6, (0, 8))
    drawn = [{v for v, _ in clips} for clips, _ in clean]
    bad = min(drawn[1] - drawn[0])  # first met at step 1, and drawn again later
    assert any(bad in later for later in drawn[2:])
    name = f"v{bad:03}.webm"
    said: list[str] = []
    broken = read(videos, 6, (0, 8), decoder=FakeDecoder({name}), log=said.append)
    assert said == [f"skipped {Path('/corpus') / name}: cannot be opened as a video (unsupported format or "
                    "corrupt file)"]  # once, though later steps draw it too
    assert broken[0] == clean[0]
    for (clips, _), (was, _) in zip(broken[1:], clean[1:]):
        assert bad not in {v for v, _ in clips} and len({v for v, _ in clips}) == 6  # replaced by an unplanned video
        assert [c for c in clips if c in was] == [c for c in was if c[0] != bad]  # the other slots are untouched
    # a run resumed after the failure (it never met the bad video before) replaces it with the same clips
    assert read(videos, 6, (2, 8), decoder=FakeDecoder({name})) == broken[2:]


def test_data_that_cannot_be_read_at_all_is_one_clear_error():
    from s3d_retrieval.model.narration import DataError

    bad = FakeDecoder({f"v{i:03}.webm" for i in range(6)})
    with pytest.raises(DataError, match="clips in a row could not be read"):
        read(narrated(6), 2, (0, 1), decoder=bad)


def test_a_video_that_fails_at_one_instant_is_tried_again_at_others(tmp_path):
    videos = narrated(12, tmp_path)
    for video in videos:
        video.path.touch()  # files that exist and open: the failure is of one span, not of the video
    drawn = [(v, first) for clips, _ in read(videos, 6, (0, 8)) for v, first in clips]
    first_clip = {v: f for v, f in reversed(drawn)}  # each video's first clip
    # a video whose first clip is drawn again later, and another clip of it after that
    bad, corrupt = next((v, f) for v, f in first_clip.items() if drawn.count((v, f)) > 1 and any(
        w == v and g != f for w, g in drawn))
    name = f"v{bad:03}.webm"

    decoder = FailingDecoder(lambda met, first, before: (met, first) == (name, corrupt),  # a corrupt span, always
                             "frame 3 cannot be decoded (corrupt file?)")
    said: list[str] = []
    clips = read(videos, 6, (0, 8), readers=1, decoder=decoder, log=said.append)
    assert said == [f"skipped {tmp_path / name}: frame 3 cannot be decoded (corrupt file?)"]  # named once
    assert decoder.calls.count((name, corrupt)) > 1  # the span is tried each time it is drawn, and fails
    read_back = {(v, f) for step, _ in clips for v, f in step}
    assert (bad, corrupt) not in read_back and any(v == bad for v, _ in read_back)  # its other spans train


def test_a_video_that_fails_to_open_is_tried_again_until_it_has_failed_a_few_times():
    from s3d_retrieval.model.readers import OPEN_FAILURES

    videos = narrated(12)  # under /corpus, which does not exist: each failure is one to open the file
    drawn = [{v for v, _ in clips} for clips, _ in read(videos, 6, (0, 20))]
    back = min(drawn[1] - drawn[0])  # first met at step 1, drawn again later
    lost = next(v for v in range(12) if v != back and sum(v in step for step in drawn) > OPEN_FAILURES)
    back_name, lost_name = f"v{back:03}.webm", f"v{lost:03}.webm"

    # a network mount on which `back` is missing at its first open only, `lost` at every one
    decoder = FailingDecoder(lambda met, _, before: met == lost_name or (met == back_name and back_name not in before),
                             "no such file")
    said: list[str] = []
    clips = read(videos, 6, (0, 20), readers=1, decoder=decoder, log=said.append)
    assert sorted(said) == sorted(f"skipped {Path('/corpus') / name}: no such file"
                                  for name in (back_name, lost_name))  # each named once
    assert sum(call[0] == back_name for call in decoder.calls) > 1  # opened again when drawn again...
    assert any(back in {v for v, _ in step} for step, _ in clips[2:])  # ...and trained on
    assert sum(call[0] == lost_name for call in decoder.calls) == OPEN_FAILURES  # then no more tries
