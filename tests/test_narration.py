"""Narrated-data readers and the demo corpus: every format parses, bad files are named with their line."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from s3d_retrieval.model import corpus
from s3d_retrieval.model.clips import ClipSampling, bag, read_clip
from s3d_retrieval.model.narration import DataError, Line, read_dataset, read_subtitles
from tests.conftest import write_clip

SRT = """1
00:00:01,000 --> 00:00:03,500
a <i>red</i> ball moving left

2
00:01:02,250 --> 00:01:04,000
welcome back
"""
VTT = """WEBVTT

00:01.000 --> 00:03.500 align:start
a red ball
moving left

01:02.250 --> 01:04.000
welcome back
"""
EXPECTED = [Line(1.0, 3.5, "a red ball moving left"), Line(62.25, 64.0, "welcome back")]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("narrated")
    for name in ("a", "b", "c"):
        write_clip(folder / f"{name}.avi", 20, 10, (64, 48), "MJPG", seed=1)
    return folder


@pytest.mark.parametrize("suffix,text", [(".srt", SRT), (".vtt", VTT)])
def test_subtitles_parse_to_plain_lines_in_seconds(tmp_path, suffix, text):
    path = tmp_path / f"v{suffix}"
    path.write_text(text)
    assert read_subtitles(path) == EXPECTED


def test_a_broken_timing_line_is_named_with_its_line(tmp_path):
    path = tmp_path / "v.srt"
    path.write_text(SRT.replace("00:01:02,250 --> 00:01:04,000", "00:01:02,250 --> 00:01:0x,000"))
    with pytest.raises(DataError, match=rf"^{path}:6: malformed cue timing"):
        read_subtitles(path)
    path.write_bytes(b"1\n00:00:01,000 --> 00:00:02,000\ncaf\xe9\n")
    with pytest.raises(DataError, match=rf"^{path}:3: not UTF-8"):
        read_subtitles(path)


def test_folder_of_videos_with_subtitles(videos, tmp_path):
    (videos / "a.srt").write_text(SRT)
    (videos / "b.vtt").write_text(VTT)
    data = read_dataset(videos)
    assert [v.path.name for v in data.videos] == ["a.avi", "b.avi"]
    assert all(list(v.lines) == EXPECTED for v in data.videos)
    assert [p.name for p in data.unnarrated] == ["c.avi"]


def test_howto100m_caption_folder(tmp_path):
    (tmp_path / "videos").mkdir()
    write_clip(tmp_path / "videos" / "x1.avi", 20, 10, (64, 48), "MJPG", seed=2)
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "x1.csv").write_text("start,end,text\n2.5,4,second line\n0,1.5,first  line\n")
    data = read_dataset(tmp_path)
    assert [(v.path.name, v.lines) for v in data.videos] == [
        ("x1.avi", (Line(0, 1.5, "first line"), Line(2.5, 4, "second line")))]
    (tmp_path / "captions" / "x1.csv").write_text("start,end,text\n0,1,fine\nsoon,2,bad\n")
    with pytest.raises(DataError, match=r"x1\.csv:3: start 'soon' is not a number"):
        read_dataset(tmp_path)


def test_one_csv_for_all_videos(videos, tmp_path):
    table = videos / "narration.csv"
    with open(table, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["video", "start", "end", "text"])
        rows.writerows([["a.avi", 0, 1, "one"], ["c", 1, 2, "two"], ["gone", 0, 1, "three"]])
    data = read_dataset(table)
    assert [(v.path.name, [x.text for x in v.lines]) for v in data.videos] == [("a.avi", ["one"]), ("c.avi", ["two"])]
    assert data.missing == ["gone"]
    table.write_text("video,begin,end,text\n")
    with pytest.raises(DataError, match=r"narration\.csv:1: missing column\(s\) start"):
        read_dataset(table)


def test_no_narrated_videos_is_one_clear_error(tmp_path):
    write_clip(tmp_path / "lonely.avi", 10, 10, (64, 48), "MJPG")
    with pytest.raises(DataError, match="no narrated videos found; each video needs a same-stem .srt or .vtt"):
        read_dataset(tmp_path)
    with pytest.raises(DataError, match="no such folder or file"):
        read_dataset(tmp_path / "nope")


def test_bags_are_the_nearest_narrations_in_time():
    lines = (Line(0, 2, "a"), Line(3, 5, "b"), Line(10, 12, "c"), Line(5.5, 6.5, "d"))
    assert bag(lines, 1, 3) == ["b", "d", "a"]
    assert bag(lines, 2, 2) == ["c", "d"]
    assert bag(lines[:1], 0, 3) == ["a", "a", "a"]  # fewer narrations than K: the own one repeats


def test_clips_come_from_the_client_sampler_and_stay_inside_the_video(tmp_path):
    path = write_clip(tmp_path / "ramp.avi", 50, 25)  # frame i is grey level i; 2 s
    sampling = ClipSampling(frames=8, fps=10, size=32)
    # sample k is the frame on screen at k/10 s, i.e. source frame 2.5k rounded down
    assert [int(f[0, 0, 0]) for f in read_clip(path, 0, sampling)] == [int(2.5 * k) for k in range(8)]
    assert [int(f[0, 0, 0]) for f in read_clip(path, 6, sampling)] == [int(2.5 * k) for k in range(6, 14)]
    last = [int(2.5 * k) for k in range(12, 20)]  # the video's 20 samples end the clip, however late it is asked
    assert [int(f[0, 0, 0]) for f in read_clip(path, 15, sampling)] == last
    assert [int(f[0, 0, 0]) for f in read_clip(path, 600, sampling)] == last
    assert not list(tmp_path.glob("*.u8")) and sorted(p.name for p in tmp_path.iterdir()) == ["ramp.avi"]  # no cache


def test_the_corpus_composes_and_narrates_loosely(tmp_path):
    summary = corpus.write_corpus(tmp_path / "c", videos=6, heldout=5, story_events=3, seed=3)
    root = tmp_path / "c"
    assert summary["describable_events"] == len(corpus.ALL_EVENTS) >= 40
    assert sorted(p.suffix for p in (root / "train").iterdir()).count(".webm") == 6
    data = read_dataset(root / "train")
    assert len(data.videos) == 6 and not data.unnarrated
    texts = [line.text for v in data.videos for line in v.lines]
    assert any(t in corpus.FILLERS for t in texts)  # lines unrelated to the picture
    with open(root / "heldout" / "queries.csv") as f:
        queries = list(csv.DictReader(f))
    assert len({q["sentence"] for q in queries}) == len(queries) == 5
    with open(root / "story" / "story.csv") as f:
        story = list(csv.DictReader(f))
    assert len(story) == 3 and all(float(r["end"]) - float(r["start"]) == corpus.EVENT_SECONDS for r in story)
    with pytest.raises(FileExistsError):
        corpus.write_corpus(root)
