"""Moments: spans of windows grown around the best one, several per video, on score curves whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from s3d_retrieval.client.library.metrics import iou
from s3d_retrieval.client.library.like import Like, LikeError
from s3d_retrieval.client.library.moments import find, inside, levels, shares
from s3d_retrieval.client.library.rank import Windows, rank
from s3d_retrieval.client.library.search import Result, rank_queries


def windows(seconds: float, length: float, stride: float) -> np.ndarray:
    """Spans of windows over a video, the last aligned to its end (as the decoder cuts them)."""
    starts = np.arange(0, seconds - length + 1e-9, stride)
    if starts[-1] + length < seconds:
        starts = np.r_[starts, seconds - length]
    return np.stack([starts, starts + length], axis=1)


def curve(spans: np.ndarray, events: list[tuple[float, float, float]], noise: float = 0.05, seed: int = 0):
    """Window embeddings (one dimension) whose score against the query [1] is each event's height once it fills
    a third of the window (less: in proportion), plus noise. The demo model scores so: on the story of corpus seed
    0, windows a quarter to a half filled by the event score 0.87 of the way from the video's median to its best."""
    rng = np.random.default_rng(seed)
    score = rng.normal(0, noise, len(spans))
    for start, end, height in events:
        inter = np.clip(np.minimum(spans[:, 1], end) - np.maximum(spans[:, 0], start), 0, None)
        score += height * np.minimum(1, 3 * inter / (spans[:, 1] - spans[:, 0]))
    return score[:, None].astype(np.float32), np.ones(1, np.float32)


def overlap(moment, truth) -> float:
    return float(iou(np.array([[moment.start, moment.end]]), np.array([truth]))[0])


@pytest.mark.parametrize("stride", [1.6, 0.8, 0.4])
def test_a_moment_covers_the_event_where_the_best_window_covers_a_part(stride):
    spans = windows(30, 1.6, stride)
    embeddings, query = curve(spans, [(12.0, 16.0, 1.0)])
    [moment] = find(embeddings, spans, query)
    assert overlap(moment, (12, 16)) >= 0.75
    best = int(np.argmax(embeddings @ query))
    assert moment.window == tuple(spans[best]) and moment.score == pytest.approx(float(embeddings[best, 0]))
    assert float(iou(spans[best][None], np.array([[12, 16]]))[0]) <= 0.4  # alone, the window could not


def test_at_half_window_strides_a_neighbour_meeting_the_centre_covers_it_whatever_the_rounding():
    frames = np.arange(0, 400, 8)  # the demo's sampling: 16-frame windows every 8 frames at 10 fps
    spans = np.stack([frames * 0.1, (frames + 16) * 0.1], axis=1)  # seconds, as the decoder computes them
    exact = [(np.abs(frames - f) <= 8).sum() for f in frames]  # in whole frames: the window and both neighbours
    alone = np.eye(len(frames))  # window i scoring 1, the others 0: its own level is 1 / the windows averaged
    assert [int(round(1 / levels(alone[i], spans)[i])) for i in range(len(frames))] == exact


def test_levels_average_the_windows_covering_each_centre_and_shares_tile_the_video():
    spans = windows(9.7, 1.6, 0.5)
    scores = np.random.default_rng(3).normal(size=len(spans))
    centres = spans.mean(axis=1)
    brute = [scores[(spans[:, 0] <= c) & (spans[:, 1] >= c)].mean() for c in centres]
    np.testing.assert_allclose(levels(scores, spans), brute)
    begin, end = shares(spans)
    assert begin[0] == 0 and end[-1] == pytest.approx(9.7) and np.array_equal(begin[1:], end[:-1])
    assert np.all((centres >= begin) & (centres <= end))
    one = windows(8, 1.6, 1.6)  # windows one stride apart: a window is its own level and its own share
    np.testing.assert_allclose(levels(scores[:len(one)], one), scores[:len(one)])
    np.testing.assert_allclose(np.stack(shares(one), axis=1), one)


def test_several_moments_come_best_first_and_never_overlap_and_a_shoulder_is_not_one():
    spans = windows(40, 1.6, 0.8)
    embeddings, query = curve(spans, [(5.0, 9.0, 0.7), (20.0, 24.0, 1.0), (30.0, 34.0, 0.65)], noise=0.0)
    found = find(embeddings, spans, query, count=5)
    assert [overlap(m, t) >= 0.6 for m, t in zip(found, [(20, 24), (5, 9), (30, 34)])] == [True] * 3
    assert len(found) == 3  # three events: their shoulders and the flat background are not moments
    assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    ordered = sorted((m.start, m.end) for m in found)
    assert all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:]))
    assert find(embeddings, spans, query, count=1) == found[:1]


def test_a_noisy_background_is_not_a_moment_and_moments_come_best_first():
    spans = windows(60, 1.6, 0.8)
    embeddings, query = curve(spans, [(30.0, 34.0, 1.0)], noise=0.1, seed=4)
    assert len(find(embeddings, spans, query, count=5)) == 1  # one event: the ripples around it are not moments
    rng = np.random.default_rng(5)
    for _ in range(200):  # any curve: the first holds the best window, the rest follow by score
        scores = rng.normal(size=(len(spans), 1)).astype(np.float32)
        found = find(scores, spans, np.ones(1, np.float32), count=4)
        assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
        assert found[0].score == float(scores.max())


def test_a_flat_video_is_one_moment_of_all_of_it():
    spans = windows(10, 1.6, 0.8)
    [moment] = find(np.ones((len(spans), 1), np.float32), spans, np.ones(1, np.float32), count=3)
    assert (moment.start, moment.end) == (0.0, 10.0)


def test_inside_takes_the_windows_centred_in_a_span_or_the_nearest_to_a_point():
    spans = windows(10, 2.0, 1.0)  # centres 1, 2, ..., 9
    assert list(inside(spans, 2.5, 5.0)) == [2, 3, 4]
    assert list(inside(spans, 4.4, 4.4)) == [3]


def test_a_later_moment_grows_up_to_an_earlier_one_and_not_into_it():
    spans = windows(8, 1.0, 1.0)  # one window a second: levels are the scores, shares the windows
    scores = np.array([0, 0, 1.0, 0.8, 0.82, 0, 0, 0], np.float32)
    first, second = find(scores[:, None], spans, np.ones(1, np.float32), count=2)
    assert (first.start, first.end) == (2, 3)  # 0.8 is further below 1.0 than GROW allows
    assert (second.start, second.end, second.window) == (3, 5, (4, 5))  # from its peak, down to the first


def test_a_like_leaves_its_own_moment_out_and_its_video_ranks_by_the_next():
    """One-second windows whose score against the liked window ([1, 0]) is their first coordinate."""
    def video(name: str, scores: list[float]):
        return name, np.array([[x, 0.0] for x in scores], np.float32), [(t, t + 1.0) for t in range(len(scores))]

    source = video("/lib/a.mp4", [1.0] + [0.0] * 8 + [0.6] + [0.0] * 8)  # the liked moment at 0.5 s, another at 9 s
    windows = Windows.join([source, video("/lib/b.mp4", [0.7]), video("/lib/c.mp4", [0.65]),
                            video("/lib/d.mp4", [0.5])])
    like = Like.parse("/lib/a.mp4@0.5")

    def ask(top: int) -> list[tuple[str, float]]:
        result = rank_queries(lambda texts: None, [], [like], lambda _: (source[1], np.array(source[2])),
                              lambda q, n, k: rank(q, windows, n, k), top, 1, Result([str(like)], []))
        return [(m.video, round(m.score, 4)) for m in result.matches[0]]

    assert ask(2) == [("/lib/b.mp4", 0.7), ("/lib/c.mp4", 0.65)]  # a.mp4 now scores 0.6: one more was needed
    assert ask(3) == [("/lib/b.mp4", 0.7), ("/lib/c.mp4", 0.65), ("/lib/a.mp4", 0.6)]  # and its next moment
    past = Like.parse("/lib/a.mp4@99")  # past the end: the last window, which is then what is left out
    assert past.resolve(source[1], np.array(source[2]))[1] == (17.0, 18.0)
    with pytest.raises(LikeError, match="give VIDEO@SECONDS"):
        Like.parse("/lib/a.mp4@inf")
