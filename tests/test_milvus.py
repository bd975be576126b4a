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


def test_re_runs_replacements_removals_and_failures(server, library, tmp_path, capsys):
    copy = tmp_path / "library"
    shutil.copytree(library, copy)
    uri = str(tmp_path / "lib.db")
    milvus = ["--milvus", uri, "--collection", "lib"]
    assert run(server, capsys, "index", str(copy), *milvus, *FLAGS)[0] == 0
    clip = str(copy / "a" / "clip0.avi")
    before = windows_of(uri, clip)
    code, out, _ = run(server, capsys, "index", str(copy), *milvus, *FLAGS)
    assert code == 0 and "added 0, replaced 0, unchanged 5" in out and windows_of(uri, clip) == before
    write_clip(Path(clip), 50, 10, (64, 64), "MJPG", seed=40)  # new content, another length
    code, out, _ = run(server, capsys, "index", str(copy), *milvus, *FLAGS)
    assert code == 0 and "added 0, replaced 1, unchanged 4" in out
    after = windows_of(uri, clip)
    assert len({token for token, _ in after}) == 1 and not set(after) & set(before)  # the old windows are gone
    code, out, _ = run(server, capsys, "remove", str(copy / "a"), *milvus)
    assert code == 0 and out == f"removed 2 video(s) from {uri}\n"
    code, out, _ = run(server, capsys, "search", "anything", "--top", "9", "--json", *milvus)
    assert {Path(m["video"]).parent.name for m in json.loads(out)["results"][0]["matches"]} == {"b"}
    for uri_given, message in ((str(tmp_path / "nothing"), "give a Milvus Lite file ending in .db"),
                               ("http://127.0.0.1:1", "cannot open Milvus at http://127.0.0.1:1"),
                               (str(tmp_path / "other.db"), "no collection 'lib'")):
        code, out, err = run(server, capsys, "search", "x", "--milvus", uri_given, "--collection", "lib")
        assert (code, out) == (2, "") and err.startswith("error: ") and message in err and err.count("\n") == 1
    code, _, err = run(server, capsys, "index", str(copy), *milvus, "--size", "96")
    assert code == 2 and "was built with" in err  # another sampling is refused, nothing written
    assert run(server, capsys, "search", "x", "--json", *milvus)[0] == 0


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
