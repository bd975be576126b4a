"""Scale-out: sharded indexing and merge, the search structure (exact and faiss IVF), filters."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s3d_retrieval.client.cli import main
from s3d_retrieval.client.library import vectors
from s3d_retrieval.client.library.index import Index, IndexFolderError
from s3d_retrieval.client.library.indexing import index_videos
from s3d_retrieval.client.library.merge import merge
from s3d_retrieval.client.library.rank import Windows, rank
from s3d_retrieval.client.library.filters import Filters
from s3d_retrieval.client.library.search import search_index
from s3d_retrieval.client.library.walk import Shard, walk
from tests.conftest import files_of, write_clip
from tests.test_index import SAMPLING, check_consistent, library  # noqa: F401 - the fixture

QUERIES = ["a dog running", "someone cooking", "a red ball"]


def same_results(session, a: Path, b: Path) -> None:
    """Two indexes hold the same videos and windows, and answer queries identically."""
    with Index(a, "s3d_milnce") as left, Index(b, "s3d_milnce") as right:
        pick = lambda e: (e.sha256, e.size, e.duration, e.row_count, e.model_version)  # noqa: E731
        assert {p: pick(e) for p, e in left.entries().items()} == {p: pick(e) for p, e in right.entries().items()}
        lw, rw = left.windows(), right.windows()
        assert lw.videos == rw.videos
        np.testing.assert_array_equal(lw.embeddings, rw.embeddings)
        np.testing.assert_array_equal(lw.spans, rw.spans)
        assert search_index(session, QUERIES, left, left.view(), top=4).matches == \
            search_index(session, QUERIES, right, right.view(), top=4).matches


def test_shares_are_disjoint_stable_and_cover_the_library(library, tmp_path):  # noqa: F811
    found = walk([library])
    shares = [[p for p in found.files if Shard(i, 3).owns(found.keys[p])] for i in range(3)]
    assert sorted(sum(shares, [])) == sorted(found.files)
    moved = tmp_path / "elsewhere"
    os.rename(library, moved)  # another machine, another mount point: the same shares
    again = walk([moved])
    assert [[Path(p).name for p in share] for share in shares] == \
        [[Path(p).name for p in again.files if Shard(i, 3).owns(again.keys[p])] for i in range(3)]
    with pytest.raises(ValueError, match="write I/N"):
        Shard.parse("1-3")
    with pytest.raises(ValueError, match="below N"):
        Shard.parse("3/3")


def test_two_shards_and_merge_equal_one_process_and_a_killed_shard_rerun_too(server, session, library,  # noqa: F811
                                                                            tmp_path, capsys):
    with Index(tmp_path / "one", "s3d_milnce", SAMPLING, create=True) as index:
        index_videos(session, index, [library])
    found = walk([library])
    owned = [sum(Shard(i, 2).owns(found.keys[p]) for p in found.files) for i in range(2)]
    killed = int(np.argmax(owned))
    assert owned[killed] >= 3  # one commit each (--flush-every 1): at least three, so a kill after one is mid-run
    shards = [tmp_path / f"shard-{i}" for i in range(2)]
    with Index(shards[1 - killed], "s3d_milnce", SAMPLING, create=True) as index:
        index_videos(session, index, [library], shard=Shard(1 - killed, 2))
    command = [sys.executable, "-m", "s3d_retrieval.client", "--server", f"127.0.0.1:{server.port}",
               "--windows-per-request", "2",  # as the `session` fixture: the same batches, the same float sums
               "index", str(library), "--index", str(shards[killed]), "--flush-every", "1", "--size", "64",
               "--shard", f"{killed}/2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert line.startswith("committed 1 video(s)"), line
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL  # killed, not finished
    finally:
        proc.kill()
    with Index(shards[killed], "s3d_milnce", read_only=True) as index:
        done = len(index.entries())
    assert 1 <= done < owned[killed]  # the kill fell mid-run
    capsys.readouterr()
    assert main(command[3:]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]  # the re-run redid only the rest
    assert summary.startswith(f"added {owned[killed] - done}, replaced 0, unchanged {done},"), summary
    counts = []
    for folder in shards:
        with Index(folder, "s3d_milnce") as index:
            counts.append(len(index.entries()))
    assert counts == owned
    out = tmp_path / "merged"
    stats = merge(shards, out, "s3d_milnce")
    assert (stats.added, stats.replaced, stats.kept) == (6, 0, 0)
    check_consistent(out, library)
    same_results(session, tmp_path / "one", out)
    assert main(["--server", f"127.0.0.1:{server.port}", "merge", *map(str, shards), "--index", str(out)]) == 0
    before = files_of(out)  # merged and its search structure built
    assert main(["--server", f"127.0.0.1:{server.port}", "merge", *map(str, shards), "--index", str(out)]) == 0
    assert "added 0, replaced 0, kept 6; 0 shard files" in capsys.readouterr().out
    assert files_of(out) == before  # a merge that changes nothing: no generation, no rebuild, no file touched
    same_results(session, tmp_path / "one", out)


def test_merge_keeps_the_newest_entry_and_refuses_other_settings(session, library, tmp_path):  # noqa: F811
    clip = sorted(library.iterdir())[0]
    for name in ("old", "new"):
        with Index(tmp_path / name, "s3d_milnce", SAMPLING, create=True) as index:
            index_videos(session, index, [clip])
    with sqlite3.connect(tmp_path / "old" / "index.sqlite") as db:
        db.execute("UPDATE videos SET indexed_at = '2020-01-01T00:00:00+00:00'")
    with Index(tmp_path / "new", "s3d_milnce") as index:
        newest = index.records()[str(clip)]
    merge([tmp_path / "new", tmp_path / "old"], tmp_path / "out", "s3d_milnce")
    with Index(tmp_path / "out", "s3d_milnce") as index:
        assert index.records()[str(clip)] == newest
    with Index(tmp_path / "other", "s3d_milnce", SAMPLING.__class__(size=32), create=True):
        pass
    with pytest.raises(IndexFolderError, match="same settings"):
        merge([tmp_path / "new", tmp_path / "other"], tmp_path / "out2", "s3d_milnce")
    with pytest.raises(IndexFolderError, match="no index here"):
        merge([tmp_path / "missing"], tmp_path / "out3", "s3d_milnce")


@pytest.fixture(scope="module")
def synthetic() -> tuple[vectors.Parts, Windows]:
    """600 videos of 1-40 windows in clusters (as real windows of a video are), 32-d."""
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 40, 600).tolist()
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    emb = [(centres[rng.integers(40)] + 0.3 * rng.standard_normal((c, 32))).astype(np.float32) for c in counts]
    spans = [np.stack([np.arange(c) * 1.6, np.arange(c) * 1.6 + 3.2], 1) for c in counts]
    videos = [(f"/lib/{'a' if i % 3 else 'b'}/{i:03d}.mp4", float(c)) for i, c in enumerate(counts)]
    parts = vectors.Parts(videos, lambda v: (emb[v], spans[v]), counts)
    return parts, Windows.join([(videos[i][0], emb[i], spans[i]) for i in range(len(counts))])


class Probed:
    """A faiss index that records the lists each search probed."""

    def __init__(self, ann, probes: list[int]):
        self.ann, self.probes = ann, probes
        self.nlist, self.ntotal = ann.nlist, ann.ntotal

    def search(self, queries, k, params):
        self.probes.append(params.nprobe)
        return self.ann.search(queries, k, params=params)


def assert_same(got, expected) -> None:
    assert [m.video for m in got] == [m.video for m in expected]
    np.testing.assert_allclose([m.score for m in got], [m.score for m in expected], rtol=1e-5)
    assert [[(x.start, x.end, x.window) for x in m.moments] for m in got] == \
        [[(x.start, x.end, x.window) for x in m.moments] for m in expected]


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_the_search_structure_ranks_as_rank_does_and_filters_never_lose(synthetic, tmp_path, kind, monkeypatch):
    parts, windows = synthetic
    monkeypatch.setattr(vectors, "CHUNK", 1000)  # several chunks, videos across chunk edges
    vectors.build(tmp_path, parts, "fp", kind)
    found = vectors.VectorSearch(tmp_path)
    assert found.kind == kind and found.rows == len(windows.embeddings)
    queries = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    expected = rank(queries, windows, 10, moments=3)  # windows overlap (3.2 s, 1.6 s apart): levels and shares
    got = found.search(queries, 10, moments=3)
    assert max(len(m.moments) for g in got for m in g) > 1
    if kind == "exact":
        for g, e in zip(got, expected):
            assert_same(g, e)
    else:  # approximate, re-scored exactly: what it returns is right, and nearly all of the true top 10
        recall = np.mean([len({m.video for m in g} & {m.video for m in e}) / 10 for g, e in zip(got, expected)])
        assert recall >= 0.9 and all(len(g) == 10 for g in got)
    only = np.flatnonzero([Filters(glob="/lib/b/*", max_duration=2).accepts(*v) for v in parts.videos])
    assert 0 < len(only) < 12  # fewer allowed videos than asked for: every one of them comes back
    kept = Windows.join([(windows.videos[v], windows.embeddings[windows.rows(windows.videos[v])],
                          windows.spans[windows.rows(windows.videos[v])]) for v in only])
    few = vectors.VectorSearch(tmp_path, nprobe=2)  # 2 lists of 64: the filter's few videos are mostly elsewhere
    probes = []
    if kind == "ivf":
        [segment] = few.segments
        assert segment.nprobe < segment.ann.nlist
        segment.ann = Probed(segment.ann, probes)
    for g, e in zip(few.search(queries, 12, only, moments=2), rank(queries, kept, 12, moments=2)):
        assert len(g) == len(only)
        assert_same(g, e)
    assert kind == "exact" or max(probes) > 2  # the search widened to find them


def subset(parts: vectors.Parts, numbers) -> vectors.Parts:
    numbers = list(numbers)
    return vectors.Parts([parts.videos[v] for v in numbers], lambda i: parts.rows(numbers[i]),
                         [parts.counts[v] for v in numbers], [f"p{v}" for v in numbers])


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_the_structure_grows_and_shrinks_in_place_and_answers_as_a_full_build(synthetic, tmp_path, kind,
                                                                             monkeypatch):
    parts, windows = synthetic
    monkeypatch.setattr(vectors, "MAX_SEGMENTS", 4)
    vectors.build(tmp_path, subset(parts, range(300)), "1", kind)
    base = tmp_path / vectors.FOLDER
    [first] = vectors.read_manifest(tmp_path)["segments"]
    untouched = files_of(base / first["name"])
    live = set(range(300))
    for step, new in enumerate([range(300, 400), range(400, 420), range(420, 440), range(440, 460)]):
        manifest = vectors.read_manifest(tmp_path)
        gone = {first["name"]: [step * 7, step * 7 + 1]}  # two videos of the first segment removed each time
        if step == 2:  # and two of the third, before it is merged: they must not come back
            gone[manifest["segments"][2]["name"]] = [0, 5]
            live -= {400, 405}
        assert vectors.needs_build(tmp_path, manifest, kind, 0) is None
        vectors.update(tmp_path, manifest, str(step + 2), subset(parts, new), gone)
        live = (live | set(new)) - {step * 7, step * 7 + 1}
    manifest = vectors.read_manifest(tmp_path)
    assert manifest["generation"] == "5" and [s["videos"] for s in manifest["segments"]] == [300, 100, 20, 40]
    # 5 segments: the two smallest (20 videos each) merged
    assert manifest["segments"][0]["name"] == first["name"] and manifest["trained_rows"] == (
        sum(parts.counts[:300]) if kind == "ivf" else 0)  # the codes were added to the lists trained at first
    assert [p.name for p in base.iterdir() if p.name.startswith(".")] == [] and not vectors.garbage(tmp_path)
    planted = [base / ".s-killed.tmp", base / "s-unnamed", base / first["name"] / "dead-1.npy",
               base / "trained-old.faiss"]  # what killed or superseded writes leave
    for path in planted:
        path.mkdir() if path.suffix == "" or path.suffix == ".tmp" else path.write_bytes(b"x")
    assert sorted(vectors.garbage(tmp_path)) == sorted(planted)
    vectors.collect(tmp_path)
    assert not any(p.exists() for p in planted) and vectors.VectorSearch(tmp_path).rows
    untouched = {k: v for k, v in untouched.items() if not k.startswith("dead-")}
    assert {k: v for k, v in files_of(base / first["name"]).items() if not k.startswith("dead-")} == untouched
    grown = vectors.VectorSearch(tmp_path)
    assert sorted(int(Path(p).stem) for (p, _), dead in zip(grown.videos, grown.dead) if not dead) == sorted(live)
    queries = np.random.default_rng(3).standard_normal((5, 32)).astype(np.float32)
    order = sorted(live)
    expected = rank(queries, Windows.join([(windows.videos[v], windows.embeddings[windows.rows(windows.videos[v])],
                                            windows.spans[windows.rows(windows.videos[v])]) for v in order]), 10)
    got = grown.search(queries, 10)
    if kind == "exact":
        for g, e in zip(got, expected):
            assert_same(g, e)
    else:
        recall = np.mean([len({m.video for m in g} & {m.video for m in e}) / 10 for g, e in zip(got, expected)])
        assert recall >= 0.9
    more = sum(parts.counts[460:600])
    reason = vectors.needs_build(tmp_path, manifest, kind, grown.rows + more)
    assert (reason is not None) == (kind == "ivf")  # +50% of the rows trained on: trained afresh
    assert "dead share" in vectors.needs_build(tmp_path, {**manifest, "rows": 10}, kind, 10)


def test_a_reload_reuses_the_segments_still_named_and_leaves_the_old_structure_as_it_was(synthetic, tmp_path):
    parts, _ = synthetic
    vectors.build(tmp_path, subset(parts, range(200)), "1", "ivf")
    old = vectors.VectorSearch(tmp_path, nprobe=4)
    manifest = vectors.read_manifest(tmp_path)
    vectors.update(tmp_path, manifest, "2", subset(parts, range(200, 260)), {manifest["segments"][0]["name"]: [3]})
    new = vectors.VectorSearch(tmp_path, loaded=old)
    assert new.segments[0] is not old.segments[0] and new.segments[0].ann is old.segments[0].ann  # codes shared
    assert new.dead[3] and not old.dead[3] and old.segments[0].nprobe == 4  # the old one answers as before
    queries = np.random.default_rng(5).standard_normal((4, 32)).astype(np.float32)
    for got, fresh in zip(new.search(queries, 10), vectors.VectorSearch(tmp_path).search(queries, 10)):
        assert_same(got, fresh)


def test_the_index_keeps_its_search_structure_fresh(session, library, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "idx"
    clips = sorted(map(str, library.iterdir()))
    args = ["--server", f"127.0.0.1:{session.options.address.split(':')[1]}"]
    assert main([*args, "index", *clips[:3], "--index", str(folder), "--size", "64"]) == 0
    with Index(folder, "s3d_milnce") as index:
        built = vectors.VectorSearch(folder).manifest
        assert built["videos"] == 3 and index.refresh_search() == built  # fresh: not rebuilt
    [first] = built["segments"]
    segment_files = files_of(folder / vectors.FOLDER / first["name"])
    assert main([*args, "index", *clips, "--index", str(folder), "--size", "64"]) == 0
    grown = vectors.VectorSearch(folder)
    assert grown.manifest["videos"] == 6 and [s["videos"] for s in grown.manifest["segments"]] == [3, 3]
    assert files_of(folder / vectors.FOLDER / first["name"]) == segment_files  # grown by a segment, no copy
    capsys.readouterr()
    assert main([*args, "search", "a dog", "--index", str(folder), "--json", "--top", "6",
                 "--under", str(library), "--max-duration", "3"]) == 0
    import json

    shown = json.loads(capsys.readouterr().out)["results"][0]["matches"]
    with Index(folder, "s3d_milnce") as index:
        short = {p for p, e in index.entries().items() if e.duration <= 3}
    assert {m["video"] for m in shown} == short and short
    assert main([*args, "remove", clips[0], "--index", str(folder)]) == 0
    shrunk = vectors.VectorSearch(folder)
    assert len(shrunk.videos) == 6 and int((~shrunk.dead).sum()) == 5  # marked dead, nothing rewritten
    assert clips[0] not in {m.video for m in shrunk.search(np.ones((1, 512), np.float32), 6)[0]}
    write_clip(Path(clips[1]), 70, 20, (80, 64), "MJPG", seed=31)  # new content under the same path
    assert main([*args, "index", clips[1], "--index", str(folder), "--size", "64"]) == 0
    replaced = vectors.VectorSearch(folder)
    live = [p for (p, _), dead in zip(replaced.videos, replaced.dead) if not dead]
    assert sorted(live) == sorted(clips[1:])  # the old windows dead, the new ones in a segment of their own
    with Index(folder, "s3d_milnce", read_only=True) as index:
        assert [m.video for m in replaced.search(np.ones((1, 512), np.float32), 6)[0]].count(clips[1]) == 1
        expected = rank(np.ones((1, 512), np.float32), index.windows(), 6)[0]
    assert_same(replaced.search(np.ones((1, 512), np.float32), 6)[0], expected)
    before = files_of(folder)
    assert main([*args, "search", "a dog", "--index", str(folder), "--search", "ivf", "--top", "5"]) == 0
    assert vectors.VectorSearch(folder).kind == "exact" and files_of(folder) == before  # searched so in memory
