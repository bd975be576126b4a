"""The persistent index and the HTML report."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from s3d_retrieval.client.outputs import html_report
from s3d_retrieval.client.library.index import Index, IndexFolderError
from s3d_retrieval.client.library.indexing import index_videos
from s3d_retrieval.client.library.moments import Moment
from s3d_retrieval.client.library.rank import Match
from s3d_retrieval.client.library.search import Result, search_index

from s3d_retrieval.client.decode.video import Sampling, load
from tests.conftest import write_clip

SAMPLING = Sampling(size=64)


@pytest.fixture()
def library(tmp_path):
    folder = tmp_path / "library"
    folder.mkdir()
    for i, frames in enumerate((40, 90, 20, 130, 60, 75)):
        write_clip(folder / f"clip{i}.avi", frames, 20, (80, 64), "MJPG", seed=i)
    return folder


def check_consistent(folder, library) -> dict:
    """Every clip exactly once, with all its windows, and no shard file that nothing uses."""
    with Index(folder, "s3d_milnce") as index:
        entries = index.entries()
        windows = index.windows()
    clips = sorted(str(p) for p in library.iterdir())
    assert sorted(entries) == clips
    for path, entry in entries.items():
        _, spans = load(path, SAMPLING)
        assert entry.row_count == len(spans)
        rows = windows.spans[windows.owner == windows.videos.index(path)]
        np.testing.assert_allclose(rows, spans)
    shards = {f.name.split(".")[0] for f in (folder / "shards").iterdir()}
    assert shards == {e.shard for e in entries.values()}
    assert not [f for f in (folder / "shards").iterdir() if f.name.startswith(".")]
    return entries


def test_the_index_survives_a_kill_mid_run(server, session, library, tmp_path):
    folder = tmp_path / "index"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "s3d_retrieval.client", "--server", f"127.0.0.1:{server.port}", "index",
                             str(library), "--index", str(folder), "--flush-every", "1", "--size", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("committed 1 video(s)"), line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    with Index(folder, "s3d_milnce", SAMPLING) as index:
        before = len(index.entries())
        assert 1 <= before <= 6
        stats = index_videos(session, index, [library])
    assert (stats.added, stats.unchanged, stats.failed) == (6 - before, before, [])
    check_consistent(folder, library)


def test_unchanged_files_cost_no_requests_and_changed_ones_are_replaced(session, library, tmp_path):
    folder = tmp_path / "index"
    with Index(folder, "s3d_milnce", SAMPLING, create=True) as index:
        first = index_videos(session, index, [library], flush_every=4)
        assert first.added == 6 and first.requests > 0
        again = index_videos(session, index, [library])
        assert (again.unchanged, again.requests, again.windows) == (6, 0, 0)
        os.utime(library / "clip0.avi", (1, 1))  # same content, new mtime: hashed, still no request
        copy = library / "copy-of-clip1.avi"
        copy.write_bytes((library / "clip1.avi").read_bytes())  # same content under a new name: reused
        touched = index_videos(session, index, [library])
        assert (touched.unchanged, touched.reused, touched.requests) == (6, 1, 0)
        old = index.entries()[str(library / "clip2.avi")]
        write_clip(library / "clip2.avi", 70, 20, (80, 64), "MJPG", seed=99)  # new content, longer
        changed = index_videos(session, index, [library / "clip2.avi"])
        assert changed.replaced == 1 and changed.requests > 0
        new = index.entries()[str(library / "clip2.avi")]
        assert new.sha256 != old.sha256 and new.row_count > old.row_count
    check_consistent(folder, library)


def test_removed_files_no_longer_appear(session, library, tmp_path):
    folder = tmp_path / "index"
    with Index(folder, "s3d_milnce", SAMPLING, create=True) as index:
        index_videos(session, index, [library])
        gone = str(library / "clip3.avi")
        assert index.remove([gone]) == 1
        result = search_index(session, ["a dog running"], index, index.view(), top=10)
    assert gone not in [m.video for m in result.matches[0]] and len(result.matches[0]) == 5


def test_an_index_refuses_other_settings_or_models(session, library, tmp_path):
    folder = tmp_path / "index"
    Index(folder, "s3d_milnce", SAMPLING, create=True).close()
    with pytest.raises(IndexFolderError, match="built with Sampling"):
        Index(folder, "s3d_milnce", Sampling(size=96))
    with pytest.raises(IndexFolderError, match="built with model 's3d_milnce'"):
        Index(folder, "other", SAMPLING)
    with pytest.raises(IndexFolderError, match="no index here"):
        Index(tmp_path / "nothing", "s3d_milnce")


def test_html_report_escapes_everything_and_shows_the_moment(library, tmp_path):
    clip = str(library / "clip1.avi")
    hostile = "<script>alert(1)</script>"
    moments = (Moment(1.6, 4.8, 4.25, (1.6, 3.2)), Moment(6.4, 8.0, 2.5, (6.4, 8.0)))
    result = Result([hostile, "dogs"], [[Match(clip, moments)], []],
                    errors=[(str(tmp_path / "<b>bad</b>.mp4"), "cannot be opened")], warnings=[f"query {hostile!r}"])
    page = html_report.render(result)
    assert "<script>" not in page and "<b>bad</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;bad&lt;/b&gt;" in page
    assert "4.250" in page and "1.6-4.8 s" in page and 'src="data:image/jpeg;base64,' in page
    assert "also 6.4-8.0 s (2.500)" in page  # the video's second moment
    mp4 = write_clip(tmp_path / "x.mp4", 30, 10, (64, 64), "mp4v", seed=3)
    page = html_report.render(Result(["q"], [[Match(str(mp4), (Moment(0.0, 3.0, 1.0, (0.0, 1.6)),))]]))
    assert f'src="{mp4.as_uri()}#t=0.0,3.0"></video>' in page and '<video controls preload=none poster="data:' in page
    out = tmp_path / "report.html"
    html_report.write(out, page)
    assert out.read_text() == page and oct(out.stat().st_mode & 0o777) != "0o600"
