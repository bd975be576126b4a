"""One index, many hands: writers take turns under a file lock that a dead process never holds, readers write
nothing and still answer for every committed video, a write that changes nothing changes nothing, and a file
touched without new bytes stays served."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from s3d_retrieval.client.cli import main
from s3d_retrieval.client.library.index import Index
from s3d_retrieval.client.library.indexing import index_videos
from s3d_retrieval.client.library.lock import LockTimeout
from s3d_retrieval.client.library.rank import rank
from s3d_retrieval.client.ui.catalog import NotServed
from tests.conftest import files_of, folder_catalog, write_clip
from tests.test_index import SAMPLING, library  # noqa: F401 - the fixture

MODEL = "s3d_milnce"
HOLD = ("import sys; from pathlib import Path; from client.library.lock import WriterLock; "
        "held = WriterLock(Path(sys.argv[1]), 0).held(); held.__enter__(); print('held', flush=True); "
        "sys.stdin.readline()")


def hold(folder: Path) -> subprocess.Popen:
    """Another process that takes the index's writer lock and keeps it until a line arrives on its stdin."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline() == "held\n"
    return proc


def cli(server, *args: str) -> int:
    return main(["--server", f"127.0.0.1:{server.port}", *args])


@pytest.fixture()
def indexed(server, library, tmp_path):  # noqa: F811
    folder = tmp_path / "idx"
    assert cli(server, "index", str(library), "--index", str(folder), "--size", "64") == 0
    return folder


def test_a_second_writer_waits_for_the_first_and_says_who_holds_the_index(session, library, tmp_path):  # noqa: F811
    folder = tmp_path / "idx"
    Index(folder, MODEL, SAMPLING, create=True).close()
    holder = hold(folder)
    said, waiting, done = [], threading.Event(), []
    clip = sorted(library.iterdir())[0]

    def write() -> None:
        def log(line: str) -> None:
            said.append(line)
            waiting.set()

        with Index(folder, MODEL, lock_wait=120, log=log) as index:
            done.append(index_videos(session, index, [clip]).added)

    writer = threading.Thread(target=write)
    try:
        writer.start()
        assert waiting.wait(timeout=120)
        assert f"pid {holder.pid}" in said[0] and "another writer holds it" in said[0]
        with Index(folder, MODEL, read_only=True) as index:
            assert index.entries() == {}  # nothing committed while the other holds the lock
        holder.stdin.write("go\n")
        holder.stdin.flush()
        writer.join(timeout=120)
    finally:
        holder.kill()
    assert done == [1] and len(said) == 1  # said once
    with Index(folder, MODEL, read_only=True) as index:
        assert list(index.entries()) == [str(clip)]


def test_a_lock_held_too_long_is_one_line_and_a_dead_holders_lock_never_blocks(server, indexed, library, capsys):  # noqa: F811
    clip = str(sorted(library.iterdir())[0])
    holder = hold(indexed)
    try:
        before = files_of(indexed)
        assert cli(server, "--lock-wait", "0", "remove", clip, "--index", str(indexed)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and f"pid {holder.pid}" in err[0], err
        assert files_of(indexed) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    with Index(indexed, MODEL, lock_wait=0) as index:  # the kernel let go of the dead holder's lock
        assert index.remove([clip]) == 1
    with pytest.raises(LockTimeout):  # and a live holder does block (the check above could not pass vacuously)
        holder = hold(indexed)
        try:
            with Index(indexed, MODEL, lock_wait=0) as index:
                index.remove([str(sorted(library.iterdir())[1])])
        finally:
            holder.kill()


def exact_answer(session, folder: Path, queries: list[str], top: int) -> list[list[tuple[str, float]]]:
    with Index(folder, MODEL, read_only=True) as index:
        windows = index.windows()
    found = rank(session.embed_text(queries), windows, top)
    return [[(m.video, m.score) for m in matches] for matches in found]


def shown(capsys) -> tuple[list[list[tuple[str, float]]], list[str]]:
    document = json.loads(capsys.readouterr().out)
    return [[(m["video"], m["score"]) for m in r["matches"]] for r in document["results"]], document["warnings"]


def assert_answers(got, expected) -> None:
    for g, e in zip(got, expected):
        assert [v for v, _ in g] == [v for v, _ in e]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in e], rtol=1e-5)


def test_readers_never_write_and_answer_for_every_committed_video(server, session, indexed, library, tmp_path,  # noqa: F811
                                                                 capsys):
    queries = ["a dog", "a red ball"]
    with Index(indexed, MODEL) as index:
        index.refresh_search(kind="ivf")  # a writer chose the approximate structure
    before = files_of(indexed)
    for flags in ([], ["--search", "exact"], ["--search", "ivf", "--nprobe", "1"], ["--under", str(library)],
                  ["--glob", "*clip1*"]):
        capsys.readouterr()
        assert cli(server, "search", *queries, "--index", str(indexed), "--json", "--top", "6", *flags) == 0
        if flags == ["--search", "exact"]:
            assert_answers(shown(capsys)[0], exact_answer(session, indexed, queries, 6))
    assert cli(server, "merge", str(indexed), "--index", str(tmp_path / "copy")) == 0  # a merge's source
    assert files_of(indexed) == before
    assert json.loads((indexed / "search" / "manifest.json").read_text())["kind"] == "ivf"

    late = write_clip(library / "late.avi", 50, 20, (80, 64), "MJPG", seed=11)
    with Index(indexed, MODEL) as index:  # a writer commits; its structure rebuild has not come yet
        assert index_videos(session, index, [late]).added == 1
        assert index.remove([str(library / "clip0.avi")]) == 1
    capsys.readouterr()
    before = files_of(indexed)
    assert cli(server, "search", *queries, "--index", str(indexed), "--json", "--top", "10", "--search", "exact") == 0
    got, warnings = shown(capsys)
    assert_answers(got, exact_answer(session, indexed, queries, 10))  # the new video in, the removed one out
    assert {v for v, _ in got[0]} == {str(p) for p in library.iterdir() if p.name != "clip0.avi"}
    assert len(warnings) == 1 and "1 of 6 videos are scored exactly" in warnings[0]
    assert files_of(indexed) == before


def test_a_write_that_changes_nothing_changes_nothing(server, indexed, library, capsys):  # noqa: F811
    before = files_of(indexed)
    assert cli(server, "index", str(library), "--index", str(indexed), "--size", "64") == 0
    assert cli(server, "remove", str(library / "absent.avi"), "--index", str(indexed)) == 0
    assert "added 0, replaced 0, unchanged 6" in capsys.readouterr().out
    assert files_of(indexed) == before


def test_a_touched_file_stays_served_and_a_changed_one_waits_for_index(server, indexed, library, capsys):  # noqa: F811
    catalog = folder_catalog(indexed, check_every=0)
    clip = str(library / "clip1.avi")
    assert catalog.media(clip) == clip
    generation = catalog.current().generation
    stat = os.stat(clip)
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))  # a backup or `rsync -t`: same bytes
    with pytest.raises(NotServed) as refused:
        catalog.media(clip)
    assert refused.value.status == 409
    assert cli(server, "index", str(library), "--index", str(indexed), "--size", "64") == 0
    assert "added 0, replaced 0, unchanged 6" in capsys.readouterr().out
    assert catalog.media(clip) == clip and catalog.current().generation == generation  # no reload needed
    write_clip(library / "clip1.avi", 70, 20, (80, 64), "MJPG", seed=21)  # new bytes
    with pytest.raises(NotServed):
        catalog.media(clip)
    assert cli(server, "index", str(library), "--index", str(indexed), "--size", "64") == 0
    assert "replaced 1" in capsys.readouterr().out
    assert catalog.media(clip) == clip and catalog.current().generation != generation


def test_two_writers_a_page_and_a_search_loop_share_one_index(server, session, library, tmp_path, capsys):  # noqa: F811
    from starlette.testclient import TestClient

    from s3d_retrieval.client.api import Client
    from s3d_retrieval.client.ui.app import create_app

    folder = tmp_path / "idx"
    clips = sorted(map(str, library.iterdir()))
    for i in range(6, 12):
        clips.append(str(write_clip(library / f"more{i}.avi", 30 + 7 * i, 20, (80, 64), "MJPG", seed=i)))
    assert cli(server, "index", clips[0], "--index", str(folder), "--size", "64") == 0
    halves = [clips[1::2], clips[2::2]]
    writers = [subprocess.Popen([sys.executable, "-m", "s3d_retrieval.client", "--server", f"127.0.0.1:{server.port}", "index",
                                 *half, "--index", str(folder), "--flush-every", "1", "--size", "64"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for half in halves]
    searches, failures, pages = [], [], 0
    stop = threading.Event()

    def search_loop() -> None:  # processes of their own, as people run them (and np.load's header parsing is not
        while not stop.is_set() and len(searches) < 4:  # thread-safe on CPython 3.11: gh-106905)
            done = subprocess.run([sys.executable, "-m", "s3d_retrieval.client", "--server", f"127.0.0.1:{server.port}", "search",
                                   "a dog", "--index", str(folder), "--top", "3"], capture_output=True, text=True)
            searches.append(done.returncode)
            if done.returncode:
                failures.append(done.stderr)

    searcher = threading.Thread(target=search_loop)
    searcher.start()
    try:
        with Client(session.options.address) as api, \
                TestClient(create_app(folder_catalog(folder, check_every=0), api, api)) as http:
            stale = []
            while any(w.poll() is None for w in writers) and pages < 500:
                for answer in (http.get("/api/search", params={"q": "a dog", "top": "3"}), http.get("/api/health")):
                    pages += 1
                    if answer.status_code != 200:
                        failures.append(answer.text)
                    elif "index" in answer.json():
                        stale.append(answer.json()["index"]["stale"])
            outputs = [w.communicate(timeout=300)[0] for w in writers]
            assert [w.returncode for w in writers] == [0, 0], outputs
            videos = http.get("/api/videos").json()["videos"]
    finally:
        stop.set()
        searcher.join(timeout=300)
        for w in writers:
            w.kill()
    assert not failures and pages >= 2
    assert any(stale) or any("waiting up to" in out for out in outputs)  # they did meet: commits under the page
    assert searches and set(searches) == {0}
    assert sorted(v["video"] for v in videos) == sorted(clips)
    with Index(folder, MODEL, read_only=True) as index:
        assert sorted(index.entries()) == sorted(clips)
        generation = index.generation()
    assert json.loads((folder / "search" / "manifest.json").read_text())["generation"] == generation
    assert not [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    capsys.readouterr()


def test_a_reader_that_meets_a_file_a_writer_just_replaced_reads_again(indexed, monkeypatch):
    from s3d_retrieval.client.library import vectors

    real, opened, writing = vectors.Segment.__init__, [], threading.Event()

    def writer_first(segment, path: Path, dead: str | None = None) -> None:
        """The reader has read the manifest; before it opens the segment named there, a real writer builds the
        structure afresh and collects that segment."""
        if not writing.is_set():  # the reader's opening (not the writer's own)
            opened.append(path)
            if len(opened) == 1:
                writing.set()
                with Index(indexed, MODEL) as writer:
                    writer.refresh_search(kind="ivf")
                writing.clear()
                assert not path.exists()
        real(segment, path, dead)

    monkeypatch.setattr(vectors.Segment, "__init__", writer_first)
    with Index(indexed, MODEL, read_only=True) as index:
        found = index.view()
    assert len(opened) == 2 and opened[1] != opened[0]  # it read again, the writer's new segment
    assert found.structure is not None and found.structure.kind == "ivf" and not found.stale
