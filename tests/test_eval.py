"""`eval`: the field's metrics from score matrices, each protocol's windows, the CSV layouts, the CLI."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from s3d_retrieval.client.cli import main as client_main
from s3d_retrieval.client.defaults import MODEL_NAME
from s3d_retrieval.client.library.evalset import Clip, EvalSet, EvalSetError, load_evalset
from s3d_retrieval.client.library.evaluate import clip_starts, embed_clips, evaluate, windows_at
from s3d_retrieval.client.library.index import Index
from s3d_retrieval.client.library.metrics import iou, ranks, summary
from s3d_retrieval.client.decode.video import Sampling
from tests.conftest import write_clip

RAMP = Sampling(frames=4, fps=10, size=32)


def test_ranks_and_recalls_equal_an_independent_computation_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, (40, 12)).astype(float)  # few values: many ties
    truth = rng.integers(0, 12, 40)
    expected = [1 + int(sum(s > row[t] for s in row)) for row, t in zip(scores, truth)]
    got = ranks(scores, truth)
    assert got.tolist() == expected
    figures = summary(got)
    assert figures["R@1"] == sum(r <= 1 for r in expected) / 40
    assert figures["R@5"] == sum(r <= 5 for r in expected) / 40
    assert figures["MdR"] == statistics.median(expected) and figures["MnR"] == round(statistics.mean(expected), 6)
    assert ranks(np.zeros((3, 5)), np.array([4, 0, 2])).tolist() == [1, 1, 1]  # all tied: the truth wins


def test_several_sentences_per_video_rank_a_video_by_its_best_sentence():
    rng = np.random.default_rng(1)
    sentence_video = rng.integers(0, 6, 20)  # 20 sentences over 6 videos
    scores = rng.normal(size=(20, 6))
    mask = np.zeros((6, 20), bool)
    mask[sentence_video, np.arange(20)] = True
    got = ranks(scores.T, mask)
    for v in range(6):
        if mask[v].any():
            best = max(scores[s, v] for s in range(20) if mask[v, s])
            assert got[v] == 1 + sum(scores[s, v] > best for s in range(20))


def test_temporal_iou():
    np.testing.assert_allclose(iou(np.array([[0, 2], [0, 2], [5, 6]]), np.array([[1, 3], [0, 2], [0, 1]])),
                               [1 / 3, 1.0, 0.0])


@pytest.fixture(scope="module")
def ramp(tmp_path_factory):
    """100 frames at 25 fps (4 s) whose frame i is grey level i: a sample's source frame is readable."""
    return write_clip(tmp_path_factory.mktemp("ramp") / "ramp.avi", 100, 25)


def first_pixels(windows) -> list[list[int]]:
    return [[int(f[0, 0, 0]) for f in w] for w in windows]


def test_each_protocol_takes_the_intended_frames(ramp):
    whole, part = Clip(str(ramp)), Clip(str(ramp), 1.0, 2.0)
    assert clip_starts(whole, "mean", RAMP, 3, 4.0) == [0, 18, 36]
    assert clip_starts(whole, "max", RAMP, 3, 4.0) == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]
    assert clip_starts(part, "max", RAMP, 3, 0) == [10, 14, 16]  # the last window aligned to the span's end
    assert clip_starts(part, "mean", RAMP, 2, 0) == [10, 16]
    assert clip_starts(part, "colab", RAMP, 2, 0) == [10]
    # sample k is the frame on screen at k/10 s: source frame floor(2.5 k)
    assert first_pixels(windows_at(str(ramp), [18, 0, 99], RAMP)) == [
        [45, 47, 50, 52], [0, 2, 5, 7], [90, 92, 95, 97]]  # past the end: the last full window


class EchoSession:
    """embed_windows -> each window's grey levels, so the protocols' averaging can be seen."""

    def embed_windows(self, frames):
        return frames[:, :, 0, 0, 0].astype(np.float32)


def test_mean_averages_and_colab_takes_the_files_first_frames(ramp):
    whole = EvalSet([Clip(str(ramp))], ["a"], [0])
    segment = EvalSet([Clip(str(ramp), 1.0, 2.0)], ["b"], [0], segments=True)
    mean = embed_clips(EchoSession(), whole, "mean", RAMP, 3, [])
    assert mean[0].tolist() == [[45, 47, 50, 52]]  # windows from frames 0, 45 and 90, averaged
    assert embed_clips(EchoSession(), whole, "colab", RAMP, 3, [])[0].tolist() == [[0, 1, 2, 3]]  # own frames
    assert embed_clips(EchoSession(), segment, "colab", RAMP, 3, [])[0].tolist() == [[25, 27, 30, 32]]


def test_both_csv_layouts_and_their_errors(ramp, tmp_path):
    root = ramp.parent
    sentences = tmp_path / "msrvtt.csv"
    sentences.write_text("key,vid_key,video_id,sentence\n1,k,ramp,a grey ramp\n2,k,ramp,getting lighter\n"
                         "3,k,gone,nothing\n4,k,gone,again\n")
    found = load_evalset(sentences, root)
    assert (len(found.clips), found.sentences, found.truth, found.excluded) == (
        1, ["a grey ramp", "getting lighter"], [0, 0], ["gone"])
    segments = tmp_path / "youcook.csv"
    segments.write_text("video_id,start,end,text,task\nramp,0,2,first half,x\nramp,2,4,second half,x\n")
    found = load_evalset(segments, root)
    assert found.segments and [(c.start, c.end) for c in found.clips] == [(0, 2), (2, 4)]
    segments.write_text("video_id,start,end,text\nramp,0,2,fine\nramp,two,4,bad\n")
    with pytest.raises(EvalSetError, match=rf"^{segments}:3: start and end must be seconds"):
        load_evalset(segments, root)
    segments.write_text("video_id,start,end,text\nramp,3,2,backwards\n")
    with pytest.raises(EvalSetError, match=rf"^{segments}:2: the span 3-2 s is empty"):
        load_evalset(segments, root)
    segments.write_text("video,caption\nramp,x\n")
    with pytest.raises(EvalSetError, match=rf"^{segments}:1: the header must name"):
        load_evalset(segments, root)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    for i in range(3):
        write_clip(root / f"clip{i}.avi", 30, 10, (64, 48), "MJPG", seed=i)
    (root / "sentences.csv").write_text("video_id,sentence\nclip0,a dog\nclip1,a cat\nclip2,a car\nclip2,a bus\n"
                                        "missing,a ghost\n")
    (root / "segments.csv").write_text("video_id,start,end,text\nclip0,0,1.6,the start\nclip1,1,2.6,the end\n")
    return root


def test_the_cli_prints_the_documented_json(server, labelled, capsys):
    args = ["--server", f"127.0.0.1:{server.port}", "eval", "--videos", str(labelled), "--json",
            "--frames", "8", "--size", "64"]
    assert client_main(args + ["--csv", str(labelled / "sentences.csv")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["queries", "videos", "excluded", "protocol", "text_to_video", "video_to_text", "moments",
                         "best_window"]
    assert (out["queries"], out["videos"], out["excluded"], out["moments"], out["best_window"]) == \
        (4, 3, ["missing"], None, None)
    assert out["protocol"] == {"name": "max", "windows": None, "frames": 8, "fps": 10.0, "size": 64}
    assert list(out["text_to_video"]) == ["R@1", "R@5", "R@10", "MdR", "MnR"]
    assert out["text_to_video"]["R@5"] == 1.0  # 3 clips: every true clip is in the top 5
    assert client_main(args + ["--csv", str(labelled / "segments.csv"), "--protocol", "mean", "--windows", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["moments"]) == list(out["best_window"]) == ["R@1,IoU>=0.3", "R@1,IoU>=0.5", "R@1,IoU>=0.7", "mIoU"]
    assert out["protocol"]["windows"] == 2


def test_with_an_index_a_second_run_sends_only_text(session, labelled, tmp_path):
    evalset = load_evalset(labelled / "sentences.csv", labelled)
    with Index(tmp_path / "index", MODEL_NAME, Sampling(frames=8, size=64), create=True) as index:
        first = evaluate(session, evalset, index=index)
        before = session.requests
        again = evaluate(session, evalset, index=index)
        assert session.requests - before == 2  # the model status check and one text request
        assert again.text_to_video == first.text_to_video
        with pytest.raises(ValueError, match="use it with --protocol max"):
            evaluate(session, evalset, "mean", index=index)
