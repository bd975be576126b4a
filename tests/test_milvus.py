"""A Milvus collection as the index (`--milvus URI --collection NAME`), on Milvus Lite: the same answers as an
index folder (videos, scores, moments, filters, likes), re-runs that add nothing, replaced and removed videos,
two writers at once with no merge, and one-line failures for bad URIs and a server that is not there. Milvus
Lite is not the distributed engine: these prove the API and the behaviour, not capacity."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s3d_retrieval.client.cli import main
from s3d_retrieval.client.milvus.store import MilvusStore
from tests.conftest import write_clip

FLAGS = ["--size", "64", "--stride", "0.8"]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("milvus") / "library"
    for i, (folder, frames) in enumerate((("a", 60), ("a", 35), ("b", 80), ("b", 45), ("b", 25))):
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_clip(root / folder / f"clip{i}.avi", frames, 10, (64, 64), "MJPG", seed=i)
    return root


def run(server, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--server", f"127.0.0.1:{server.port}", *args])
    out, err = capsys.readouterr()
    return code, out, err


def windows_of(uri: str, path: str) -> list[tuple[str, float]]:
    with MilvusStore(uri, "lib", "s3d_milnce") as store:
        rows = store._rows(store.windows_name, f"path == {json.dumps(path)}", ["token", "start"])
        return sorted((r["token"], r["start"]) for r in rows)


def test_a_milvus_collection_answers_as_an_index_folder(server, library, tmp_path, capsys):
    folder, uri = tmp_path / "lib.idx", str(tmp_path / "lib.db")
    milvus = ["--milvus", uri, "--collection", "lib"]
    assert run(server, capsys, "index", str(library), "--index", str(folder), *FLAGS)[0] == 0
    code, out, _ = run(server, capsys, "index", str(library), *milvus, *FLAGS)
    assert code == 0 and "added 5" in out
    clip = str(library / "b" / "clip2.avi")
    for extra in ([], ["--under", str(library / "a")], ["--min-duration", "4"], ["--glob", "*/b/clip[24].avi"],
                  ["--like", f"{clip}@2"]):
        asked = ["search", "a dog", "water", "--top", "3", "--moments", "2", "--json", *extra]
        _, expected, _ = run(server, capsys, *asked, "--index", str(folder))
        code, found, err = run(server, capsys, *asked, *milvus)
        assert code == 0 and json.loads(found) == json.loads(expected), extra
    page(server, uri, library, json.loads(run(server, capsys, "search", "a dog", "--top", "3", "--moments", "3",
                                               "--json", *milvus)[1]))
    segments = tmp_path / "segments.csv"  # eval reads the windows back from either store
    segments.write_text("video_id,start,end,text\nclip0,0,3,a dog\nclip2,2,6,water\nclip3,0,2,a red ball\n")
    asked = ["eval", "--csv", str(segments), "--videos", str(library), "--json", *FLAGS]
    code, expected, _ = run(server, capsys, *asked, "--index", str(folder))
    assert code == 0 and json.loads(run(server, capsys, *asked, *milvus)[1]) == json.loads(expected)
    assert json.loads(expected)["moments"] is not None


def page(server, uri: str, library: Path, expected: dict) -> None:
    """The search service over the collection answers as the CLI and sends its videos."""
    pytest.importorskip("starlette", reason="the [ui] extra is not installed")
    from starlette.testclient import TestClient

    from s3d_retrieval import Client
    from s3d_retrieval.client.ui.catalog import Catalog
    from s3d_retrieval.client.ui.app import create_app

    with MilvusStore(uri, "lib", "s3d_milnce") as store, Client(f"127.0.0.1:{server.port}") as api, \
            TestClient(create_app(Catalog(lambda: store), api, api)) as http:
        assert http.get("/api/search", params={"q": "a dog", "top": "3", "moments": "3"}).json() == expected
        assert len(http.get("/api/videos").json()["videos"]) == 5
        health = http.get("/api/health").json()
        assert health["ok"] and health["index"]["videos"] == 5 and health["index"]["search"] == "milvus"
        video = expected["results"][0]["matches"][0]["video"]
        assert http.get("/api/media", params={"video": video}).content == Path(video).read_bytes()
        assert http.get("/api/media", params={"video": str(library / "nothere.avi")}).status_code == 404


def in_process(server, *args: str) -> tuple[int, str, str]:
    """The CLI in a process of its own, as people run it one command after another (a Lite file reopened)."""
    done = subprocess.run([sys.executable, "-m", "s3d_retrieval.client", "--server", f"127.0.0.1:{server.port}",
                           *args], capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return done.returncode, done.stdout, done.stderr


def test_re_runs_replacements_removals_and_failures(server, library, tmp_path, capsys):
    copy = tmp_path / "library"
    shutil.copytree(library, copy)
    shutil.copy(copy / "b" / "clip4.avi", copy / "b" / "été 4.avi")  # a path beyond ASCII, with a space
    uri = str(tmp_path / "lib.db")
    milvus = ["--milvus", uri, "--collection", "lib"]
    assert in_process(server, "index", str(copy), *milvus, *FLAGS)[0] == 0
    clip = str(copy / "a" / "clip0.avi")
    before = windows_of(uri, clip)
    code, out, err = in_process(server, "index", str(copy), *milvus, *FLAGS)
    assert code == 0 and "added 0, replaced 0, unchanged 6" in out and windows_of(uri, clip) == before, err
    write_clip(Path(clip), 50, 10, (64, 64), "MJPG", seed=40)  # new content, another length
    code, out, _ = in_process(server, "index", str(copy), *milvus, *FLAGS)
    assert code == 0 and "added 0, replaced 1, unchanged 5" in out
    after = windows_of(uri, clip)
    assert len({token for token, _ in after}) == 1 and not set(after) & set(before)  # the old windows are gone
    code, out, _ = in_process(server, "search", "anything", "--top", "9", "--json", "--glob", "*été*", *milvus)
    assert code == 0 and [m["video"] for m in json.loads(out)["results"][0]["matches"]] == [str(copy / "b" / "été 4.avi")]
    code, out, _ = in_process(server, "remove", str(copy / "a"), str(copy / "b" / "été 4.avi"), *milvus)
    assert code == 0 and out == f"removed 3 video(s) from {uri}\n"
    code, out, _ = in_process(server, "search", "anything", "--top", "9", "--json", *milvus)
    assert sorted(Path(m["video"]).name for m in json.loads(out)["results"][0]["matches"]) == \
        ["clip2.avi", "clip3.avi", "clip4.avi"]
    with MilvusStore(uri, "lib", "s3d_milnce") as store:  # no window of a removed video is left behind
        assert {r["path"] for r in store._rows(store.windows_name, 'path != ""', ["path"])} == \
            {str(copy / "b" / f"clip{i}.avi") for i in (2, 3, 4)}
    for uri_given, message in ((str(tmp_path / "nothing"), "give a Milvus Lite file ending in .db"),
                               ("http://127.0.0.1:1", "cannot open Milvus at http://127.0.0.1:1"),
                               (str(tmp_path / "other.db"), "no collection 'lib'")):
        code, out, err = run(server, capsys, "search", "x", "--milvus", uri_given, "--collection", "lib")
        assert (code, out) == (2, "") and err.startswith("error: ") and message in err and err.count("\n") == 1
    kept = windows_of(uri, str(copy / "b" / "clip2.avi"))
    code, _, err = in_process(server, "index", str(copy), *milvus, "--size", "96")
    assert code == 2 and "was built with" in err and err.count("\n") == 1  # another sampling is refused...
    code, _, err = in_process(server, "--model", "other", "search", "x", *milvus)
    assert code == 2 and "holds model 's3d_milnce', not 'other'" in err  # ...and another model
    assert windows_of(uri, str(copy / "b" / "clip2.avi")) == kept  # nothing written


def test_two_writers_fill_one_collection_at_once_with_no_merge(server, library, tmp_path, capsys):
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    milvus, db, port = start_server_in_thread(str(tmp_path / "milvus-data"))  # a Milvus the pods share
    try:
        uri = f"http://127.0.0.1:{port}"
        writers = [subprocess.Popen([sys.executable, "-m", "s3d_retrieval.client", "--server",
                                     f"127.0.0.1:{server.port}", "index", str(library), "--milvus", uri,
                                     "--collection", "lib", "--shard", f"{i}/2", *FLAGS],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}) for i in range(2)]
        outputs = [w.communicate(timeout=300) for w in writers]
        assert [w.returncode for w in writers] == [0, 0], outputs
        added = [int(out.split("added ")[1].split(",")[0]) for out, _ in outputs]
        assert sorted(added) != [0, 5] and sum(added) == 5  # each wrote its share, into one collection
        folder = tmp_path / "lib.idx"
        assert run(server, capsys, "index", str(library), "--index", str(folder), *FLAGS)[0] == 0
        asked = ["search", "a dog", "--top", "5", "--moments", "2", "--json"]
        assert json.loads(run(server, capsys, *asked, "--milvus", uri, "--collection", "lib")[1]) == \
            json.loads(run(server, capsys, *asked, "--index", str(folder))[1])
    finally:
        milvus.stop(grace=2)
        db.close()


@pytest.mark.parametrize("inside", ["before its commit", "after its commit"])
def test_two_writers_of_one_video_never_leave_its_row_without_windows(tmp_path, inside):
    """Writer B commits the same video in the middle of writer A's commit; whoever commits last, the row names
    windows that are there."""
    import numpy as np

    from s3d_retrieval.client.decode.video import Sampling
    from s3d_retrieval.client.library.store import Entry

    uri, path = str(tmp_path / "race.db"), "/lib/clip.mp4"
    entry = Entry(path, "sha", 1, 1.0, 1, 3.0, "", 0, 0)
    spans = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]])
    with MilvusStore(uri, "lib", "m", Sampling(), create=True) as a, MilvusStore(uri, "lib", "m") as b:
        a.commit([entry], [np.ones((3, 512), np.float32)], [spans])  # what both replace
        original = a._commit_rows

        def interleaved(rows):
            if inside == "after its commit":
                original(rows)
            b.commit([entry], [np.full((3, 512), 2, np.float32)], [spans])
            if inside == "before its commit":
                original(rows)

        a._commit_rows = interleaved
        a.commit([entry], [np.full((3, 512), 3, np.float32)], [spans])
        found = a.windows([path])
        assert found.videos == [path] and len(found.embeddings) == 3
        assert found.embeddings[0, 0] == (3 if inside == "before its commit" else 2)  # the last commit's


def test_stores_sharing_a_lite_file_and_a_page_whose_milvus_went_away(server, tmp_path, monkeypatch):
    pytest.importorskip("starlette", reason="the [ui] extra is not installed")
    from milvus_lite.server_manager import server_manager_instance
    from starlette.testclient import TestClient

    from s3d_retrieval import Client
    from s3d_retrieval.client.decode.video import Sampling
    from s3d_retrieval.client.ui.catalog import Catalog
    from s3d_retrieval.client.ui.app import create_app

    monkeypatch.chdir(tmp_path)
    first = MilvusStore("lib.db", "lib", "m", Sampling(), create=True)  # one file, named two ways
    with MilvusStore(str(tmp_path / "lib.db"), "lib", "m") as second:
        first.close()
        assert second.count(second.videos_name) == 0  # the file's server outlived the first store
        with Client(f"127.0.0.1:{server.port}") as api, \
                TestClient(create_app(Catalog(lambda: second, [tmp_path]), api, api)) as http:
            server_manager_instance.release_server(str(tmp_path / "lib.db"))  # Milvus goes away
            health = http.get("/api/health")
            assert health.status_code == 503 and health.json()["error"].startswith("index: Milvus at ")
            answer = http.get("/api/search", params={"like": f"{tmp_path}/x.avi@1"})
            assert answer.status_code == 503 and answer.json()["error"].startswith("index: ")


def test_a_search_widens_past_filtered_and_uncommitted_videos(tmp_path):
    """The best hits are an uncommitted version of a stored video (windows its row does not name) and videos a glob
    refuses, which Milvus cannot express: the search drops them and asks for more groups until the one accepted
    video comes back."""
    import numpy as np

    from s3d_retrieval.client.decode.video import Sampling
    from s3d_retrieval.client.library.filters import Filters
    from s3d_retrieval.client.library.store import Entry
    from s3d_retrieval.client.milvus.view import MilvusView

    query = np.zeros(512, np.float32)
    query[0] = 1.0
    spans = np.array([[0.0, 1.0], [1.0, 2.0]])
    with MilvusStore(str(tmp_path / "w.db"), "lib", "m", Sampling(), create=True) as store:
        paths = [f"/lib/{name}.mp4" for name in ("a1", "a2", "a3", "a4", "b")]  # scores 0.9 down to 0.5
        vectors = [np.tile(np.r_[0.9 - 0.1 * i, np.zeros(511)].astype(np.float32), (2, 1)) for i in range(5)]
        store.commit([Entry(p, "s", 1, 1.0, 1, 2.0, "", 0, 0) for p in paths], vectors, [spans] * 5)
        store.client.insert(store.windows_name, [{"path": "/lib/a4.mp4", "token": "uncommitted", "start": 0.0,
                                                  "end": 1.0, "duration": 2.0, "vector": query.tolist()}])
        view = MilvusView(store)
        [[best]] = view.search(query[None], 1)
        assert best.video == "/lib/a1.mp4"  # a4's uncommitted version scored higher, but its row names another
        [[only]] = view.search(query[None], 1, Filters(glob="*b.mp4"))  # five groups refused before it
        assert only.video == "/lib/b.mp4" and only.score == pytest.approx(0.5)


def test_like_wildcards_in_folders_vacuum_and_touch(tmp_path, capsys):
    """Folders whose names hold LIKE's `_`, `%` and `\\` filter and remove only themselves; windows no row names
    are vacuumed once old enough; touch records a new mtime only on the same bytes."""
    import time

    import numpy as np

    from s3d_retrieval.client.decode.video import Sampling
    from s3d_retrieval.client.library.filters import Filters
    from s3d_retrieval.client.library.store import Entry
    from s3d_retrieval.client.milvus.store import new_token

    uri = str(tmp_path / "w.db")
    paths = ["/lib/x_y/1.mp4", "/lib/xzy/2.mp4", "/lib/x\\_y/3.mp4", "/lib/50%/4.mp4", "/lib/50x/5.mp4"]
    spans, query = np.array([[0.0, 1.0]]), np.ones((1, 512), np.float32)
    with MilvusStore(uri, "lib", "m", Sampling(), create=True) as store:
        store.commit([Entry(p, f"sha{i}", 1, 1.0, 1, 1.0, "", 0, 0) for i, p in enumerate(paths)],
                     [query.copy() for _ in paths], [spans] * 5)
        view = store.view()
        for folder, expected in (("/lib/x_y", [paths[0]]), ("/lib/x\\_y", [paths[2]]), ("/lib/50%", [paths[3]])):
            assert [m.video for m in view.search(query, 9, Filters((folder,)))[0]] == expected, folder
        assert store.remove(["/lib/x_y", "/lib/50%"]) == 2
        assert sorted(store.entries()) == sorted([paths[1], paths[2], paths[4]])
        assert store.remove(["/lib/x\\_y"]) == 1 and sorted(store.entries()) == sorted([paths[1], paths[4]])

        old, young = f"{time.time_ns() - int(7200e9):x}-old", new_token()
        for token in (old, young, "0123456789abcdef0123456789abcdef"):  # the last: an earlier release's token
            store.client.insert(store.windows_name, [{"path": paths[1], "token": token, "start": 0.0, "end": 1.0,
                                                      "duration": 1.0, "vector": query[0].tolist()}] * 2)
        windows = store.count(store.windows_name)
    assert main(["--model", "m", "vacuum", "--milvus", uri, "--collection", "lib"]) == 0
    said = capsys.readouterr().out
    assert "removed 4 window(s) of 2 video version(s)" in said and "1 younger one(s) left" in said
    with MilvusStore(uri, "lib", "m") as store:
        assert store.count(store.windows_name) == windows - 4
        assert [m.video for m in store.view().search(query, 9)[0]].count(paths[1]) == 1  # its own windows stay
        store.touch(paths[1], "other bytes", 99.0)
        assert store.entry(paths[1]).mtime == 1.0
        store.touch(paths[1], "sha1", 99.0)
        assert store.entry(paths[1]).mtime == 99.0 and store.view().search(query, 9)[0]
