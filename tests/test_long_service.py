"""Long service (#31): the API keeps what it opened, readers survive a writer killed inside its transaction, the
structure keeps up with a long run, filters are vectorised, no writer waits behind a live one, a commit never
replaces newer content, non-finite embeddings never reach a user, one store interface, locks on NFS, and builds
that read each shard once."""
from __future__ import annotations

import ast
import fcntl
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from s3d_retrieval.client.api import Client
from s3d_retrieval.client.cli import main
from s3d_retrieval.client.library import filters as filtering
from s3d_retrieval.client.library import indexing, lock, readonly, stream
from s3d_retrieval.client.library.filters import Filters, Paths, sort_orders
from s3d_retrieval.client.library.index import Index
from s3d_retrieval.client.library.indexing import index_videos
from s3d_retrieval.client.library.rank import Windows, rank, rank_groups
from s3d_retrieval.client.library.store import Entry
from tests.conftest import files_of, folder_catalog
from tests.test_index import SAMPLING, library  # noqa: F401 - the fixture
from tests.test_sharing import hold

MODEL = "s3d_milnce"
ROOT = Path(__file__).resolve().parents[1]


def cli(server, *args: str) -> int:
    return main(["--server", f"127.0.0.1:{server.port}", *args])


def synthetic(folder: Path, videos: int, seed: int = 0, prefix: str = "/lib/v") -> list[Entry]:
    """An index of `videos` synthetic videos (3 unit windows each), committed in one transaction."""
    rng = np.random.default_rng(seed)
    entries = [Entry(f"{prefix}{i:05d}.mp4", f"{seed}-{i}", 1, 1.0, 1, 3.0, "", 0, 0) for i in range(videos)]
    vectors = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in rng.standard_normal((videos, 3, 512))]
    spans = [np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]])] * videos
    with Index(folder, MODEL, SAMPLING, create=True) as index:
        index.commit(entries, [v.astype(np.float32) for v in vectors], spans)
    return entries


# --- 1. the Python API keeps what it opened ----------------------------------------------------------------------

def test_the_client_keeps_its_view_until_the_index_changes(server, library, tmp_path, monkeypatch):  # noqa: F811
    folder = tmp_path / "idx"
    clips = sorted(map(str, library.iterdir()))
    with Client(f"127.0.0.1:{server.port}") as api:
        api.index(clips[:4], index=folder, sampling=SAMPLING)
        reads: list[int] = []  # a reader's reads of the entries
        real = Index.snapshot
        monkeypatch.setattr(Index, "snapshot", lambda self: (reads.append(1) if self._reader else None) or real(self))
        first = api.search("a dog", index=folder, top=10)
        assert len(reads) == 1 and len(first.matches[0]) == 4
        again = api.search("a dog", index=folder, top=10)
        assert len(reads) == 1 and again.matches == first.matches  # nothing read again: the view was kept
        with Client(f"127.0.0.1:{server.port}") as writer:  # another writer commits
            writer.index(clips[4], index=folder)
        after = api.search("a dog", index=folder, top=10)
        assert len(reads) == 2 and clips[4] in [m.video for m in after.matches[0]]


# --- 2. readers survive a writer killed inside its transaction ---------------------------------------------------

CRASH = r"""
import os, signal, sqlite3, sys
from pathlib import Path
import numpy as np
from s3d_retrieval.client.library.index import Index
from s3d_retrieval.client.library.merge import merge
from s3d_retrieval.client.library.store import Entry

real_connect, real_bump = sqlite3.connect, Index._bump
def small_cache(*args, **kwargs):  # changed pages spill into the database file before the transaction ends
    db = real_connect(*args, **kwargs)
    db.execute("PRAGMA cache_size = 8")
    return db
def bump_then_die(self):  # the last statement of a commit's or an adoption's transaction, before COMMIT
    real_bump(self)
    os.kill(os.getpid(), signal.SIGKILL)
sqlite3.connect, Index._bump = small_cache, bump_then_die
target, where = Path(sys.argv[1]), sys.argv[2]
if where == "commit":  # the videos there replaced, and many new ones
    paths = [f"/lib/v{i:05d}.mp4" for i in range(20)] + [f"/lib/new{i:05d}-{'x' * 200}.mp4" for i in range(3000)]
    entries = [Entry(p, "new", 1, 1.0, 1, 2.0, "", 0, 0) for p in paths]
    Index(target, "s3d_milnce").commit(entries, [np.ones((1, 512), np.float32)] * 3020, [np.zeros((1, 2))] * 3020)
else:
    merge([Path(sys.argv[3])], target, "s3d_milnce")
print("not killed")
"""


RECOVER = r"""
import sqlite3, sys
try:
    sqlite3.connect(sys.argv[1], timeout=0.2).execute("SELECT COUNT(*) FROM videos").fetchall()
    print("rolled back")
except sqlite3.OperationalError as err:
    print(err)
"""


@pytest.mark.parametrize("inside", ["commit", "merge"])
def test_readers_survive_a_writer_killed_inside_its_transaction(server, tmp_path, capsys, monkeypatch, inside):
    folder = tmp_path / "idx"
    synthetic(folder, 2000)  # a table of several levels, whose leaves the crashed transaction spills half-changed
    with Index(folder, MODEL) as index:
        index.refresh_search()
        before = index.entries()
    asked = ["search", "a dog", "--index", str(folder), "--top", "5", "--json"]
    assert cli(server, *asked) == 0
    expected = json.loads(capsys.readouterr().out)
    source = tmp_path / "source"
    if inside == "merge":  # a shard index whose adoption is large enough to spill pages
        synthetic(source, 3000, seed=1, prefix=f"/lib/other-{'y' * 200}-")
    db = folder / "index.sqlite"
    written = files_of(folder)["index.sqlite"]
    done = subprocess.run([sys.executable, "-c", CRASH, str(folder), inside, str(source)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    journal = db.with_name("index.sqlite-journal")
    assert journal.is_file() and files_of(folder)["index.sqlite"] != written  # half written, and a hot journal
    torn = sqlite3.connect(f"{db.as_uri()}?immutable=1", uri=True)  # what ignoring the journal would read
    assert torn.execute("SELECT COUNT(*) FROM videos").fetchone()[0] != len(before)
    torn.close()
    left = files_of(folder)
    real_copy, tried = readonly.ReadOnlyDB._copy_db, []

    def copy_while_a_writer_tries(self, out):  # a writer arriving mid-copy cannot roll the journal back under it
        real_copy(self, out)
        tried.append(subprocess.run([sys.executable, "-c", RECOVER, str(db)], capture_output=True, text=True).stdout)

    monkeypatch.setattr(readonly.ReadOnlyDB, "_copy_db", copy_while_a_writer_tries)
    assert cli(server, *asked) == 0  # search --index, as before the crash
    out, err = capsys.readouterr()
    assert json.loads(out) == expected and "Traceback" not in err
    assert tried and all(t == "database is locked\n" for t in tried)
    catalog = folder_catalog(folder, check_every=0)
    with Client(f"127.0.0.1:{server.port}") as api:
        assert set(catalog.current().view.entries) == set(before)  # the page's view
        assert api.search("a dog", index=folder, top=5).as_json() == expected  # the API
    catalog.close()
    assert cli(server, "merge", str(folder), "--index", str(tmp_path / "copy")) == 0  # merge's sources
    with Index(tmp_path / "copy", MODEL, read_only=True) as copy:
        assert set(copy.entries()) == set(before)
    assert files_of(folder) == left  # readers wrote nothing: the hot journal waits for a writer
    assert not list(Path(tempfile.gettempdir()).glob(f"{readonly.PREFIX}{os.getpid()}-*"))  # copies dropped at close

    with Index(folder, MODEL) as index:  # the next writer rolls the transaction back
        assert index.entries() == before
    assert not journal.exists()


# --- 3. searches stay fast while a long run writes -------------------------------------------------------------

def test_a_long_run_brings_the_structure_up_to_date_as_it_goes(session, library, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(indexing, "REFRESH_EVERY", 1)  # every commit
    folder = tmp_path / "idx"
    behind = []

    def after_commit(line: str) -> None:  # what a reader sees after each commit (each brought the structure up)
        with Index(folder, MODEL, read_only=True) as reader:
            behind.append(len(reader.view().missing))

    with Index(folder, MODEL, SAMPLING, create=True) as index:
        stats = index_videos(session, index, [library], flush_every=2, log=after_commit)
    assert stats.added == 6 and behind == [0, 0, 0]


def test_missing_windows_are_scored_shard_by_shard_as_rank_scores_them():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 6, 30)
    parts = [(f"/v{i}", rng.standard_normal((n, 8)).astype(np.float32),
              np.stack([np.arange(n), np.arange(n) + 1.0], axis=1)) for i, n in enumerate(sizes)]
    queries = rng.standard_normal((4, 8)).astype(np.float32)
    groups = [parts[0:7], parts[7:8], parts[8:21], parts[21:]]
    assert rank_groups(queries, groups, 5, 2) == rank(queries, Windows.join(parts), 5, 2)
    seen = []
    rank_groups(queries, (seen.append(len(g)) or g for g in groups), 5)
    assert seen == [7, 1, 13, 9]  # one group at a time


# --- 4. filters cost little at any size ----------------------------------------------------------------------------

def test_vectorised_filters_accept_what_accepts_accepts(monkeypatch):
    rng = random.Random(7)
    names = ["a", "b", "x_y", "x%y", "x\\y", "ab", "été", "[c]", "a.mp4", "b.webm"]
    paths = sorted({"/" + "/".join(rng.choice(names) for _ in range(rng.randint(1, 4))) for _ in range(600)})
    durations = np.array([rng.uniform(0, 60) for _ in paths])
    table = Paths(paths, *sort_orders(paths))
    patterns = [None, "*", "*.mp4", "/a/*", "/a*b", "/x_y/*.webm", "*/b/*", "/a/?", "/[ab]/*", "*[c]*", "/ab",
                "/a/*/b.mp4", "*b*b*", "/x\\y*", "*.webm*", "/a", "/ab*b", "/a*a"]
    for glob in patterns:
        for under in [(), ("/a",), ("/x_y", "/b"), ("/x%y/",), ("/nothing",)]:
            for low, high in [(None, None), (10.0, None), (None, 30.0)]:
                chosen = Filters(under, glob, low, high)
                mask = chosen.select(table, durations)
                expected = [chosen.accepts(p, d) for p, d in zip(paths, durations)]
                assert (mask is None and all(expected)) or list(mask) == expected, chosen
    calls: list[tuple] = []
    for name in ("fnmatchcase", "translate"):  # each video matched through Python, or a pattern made a regex
        monkeypatch.setattr(filtering.fnmatch, name, lambda *a: calls.append(a) or True)
    Filters(("/a",), "/a*.mp4", 1.0).select(table, durations)
    assert not calls  # a folder and a one-star pattern: ranges and masks only


# --- 5. no writer waits behind a live writer -------------------------------------------------------------------------

def test_no_writer_waits_behind_a_live_writer_and_dead_writers_leftovers_are_swept(server, library, tmp_path,  # noqa: F811
                                                                                  capsys):
    folder = tmp_path / "idx"
    assert cli(server, "index", str(library), "--index", str(folder), "--size", "64") == 0
    in_flight = [folder / "shards" / "live.embeddings.npy", folder / "shards" / ".live.spans.npy.tmp"]
    holder = hold(folder)  # a live writer, between writing its shard and committing it
    try:
        for path in in_flight:
            path.write_bytes(b"a live writer's work in progress")
        before = files_of(folder)
        assert cli(server, "--lock-wait", "0", "index", str(library), "--index", str(folder), "--size", "64") == 0
        assert cli(server, "--lock-wait", "0", "remove", str(tmp_path / "none"), "--index", str(folder)) == 0
        with Index(folder, MODEL, lock_wait=0):  # a plain open
            pass
        assert cli(server, "--lock-wait", "0", "vacuum", "--index", str(folder)) == 0
        assert files_of(folder) == before  # nothing swept, nothing waited for
        assert "another writer is at work" in capsys.readouterr().out
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert cli(server, "--lock-wait", "0", "vacuum", "--index", str(folder), "--older-than", "60") == 2
    assert "--older-than is for --milvus" in capsys.readouterr().err and all(path.exists() for path in in_flight)
    assert cli(server, "--lock-wait", "0", "vacuum", "--index", str(folder)) == 0  # its writer is dead
    assert capsys.readouterr().out.endswith("removed 2 file(s) no video uses\n")
    assert not any(path.exists() for path in in_flight)


# --- 6. a commit never replaces newer content with older ------------------------------------------------------------

def test_a_commit_rechecks_each_file_under_the_lock(session, library, tmp_path):  # noqa: F811
    folder = tmp_path / "idx"
    first, second = sorted(map(str, library.iterdir()))[:2]
    newer = {}

    def after_each(done: int, total: int) -> None:
        if done == 2:  # the first video was embedded long ago and waits for its commit: it changes meanwhile,
            os.utime(first, (1e9, 1e9))  # and another writer commits its new state
            with Index(folder, MODEL) as other:
                index_videos(session, other, [first])
                newer.update(other.entries())

    with Index(folder, MODEL, SAMPLING, create=True) as index:
        stats = index_videos(session, index, [first, second], flush_every=2, on_video=after_each)
        assert [p for p, _ in stats.failed] == [first] and "changed while it was being indexed" in stats.failed[0][1]
        assert stats.added == 1 and index.entries()[first] == newer[first]  # the newer commit stays


# --- 7. non-finite embeddings never reach a user ---------------------------------------------------------------------

def test_non_finite_embeddings_are_refused_and_named(server, library, tmp_path, monkeypatch, capsys):  # noqa: F811
    real, calls = stream.embed_video, []

    def poisoned(session, windows):
        done = real(session, windows)
        calls.append(1)
        if len(calls) == 2:  # the second video's windows come back with a NaN
            done.embeddings[0, 0] = np.nan
        return done

    monkeypatch.setattr(stream, "embed_video", poisoned)
    folder = tmp_path / "idx"
    assert cli(server, "index", str(library), "--index", str(folder), "--size", "64") == 1
    err = capsys.readouterr().err
    clip = sorted(map(str, library.iterdir()))[1]
    assert f"skipped: {clip}: the model server answered 1 of its" in err and "non-finite" in err
    assert cli(server, "search", "a dog", "--index", str(folder), "--top", "9", "--json") == 0
    document = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(name))
    assert len(document["results"][0]["matches"]) == 5 and clip not in json.dumps(document)


# --- 9. one store interface ---------------------------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_imports_follow_the_stages_and_nothing_dispatches_on_a_store():
    client = ROOT / "client"
    for path in (client / "library").glob("*.py"):
        wrong = {m for m in _imports(path) if m.startswith(("s3d_retrieval.client.milvus", "s3d_retrieval.client.ui",
                                                             "s3d_retrieval.client.outputs", "s3d_retrieval.client.api"))}
        assert not wrong, (path.name, wrong)
    for path in (client / "milvus").glob("*.py"):
        assert not {m for m in _imports(path) if m.startswith("s3d_retrieval.client.ui")}, path.name
    for path in [client / "api.py", *(client / "ui").glob("*.py")]:
        assert "milvus" not in " ".join(_imports(path)), path.name
        assert "isinstance(index, Milvus)" not in path.read_text() and "MilvusStore" not in path.read_text()


# --- 10. locks on NFS, and builds that read each shard once ---------------------------------------------------------

def test_two_writers_of_one_process_exclude_each_other_where_flock_is_a_posix_lock(tmp_path, monkeypatch):
    """Linux emulates flock with POSIX locks on NFS, which one process's two files share: lockf stands in."""
    monkeypatch.setattr(lock.fcntl, "flock", lambda fd, how: fcntl.lockf(fd, how))
    first, second = lock.WriterLock(tmp_path, 0), lock.WriterLock(tmp_path, 0)
    held, go, outcome = threading.Event(), threading.Event(), []

    def hold_first() -> None:
        with first.held():
            held.set()
            go.wait(timeout=60)

    thread = threading.Thread(target=hold_first)
    thread.start()
    try:
        assert held.wait(timeout=60)
        with pytest.raises(lock.LockTimeout):
            with second.held():
                outcome.append("both held it")
    finally:
        go.set()
        thread.join(timeout=60)
    with second.held():  # and once the first let go
        outcome.append("second")
    assert outcome == ["second"]


def test_a_full_build_opens_each_shard_once(tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    spans = [np.array([[0.0, 1.0]])] * 4
    with Index(folder, MODEL, SAMPLING, create=True) as index:
        for half in (0, 1):  # two commits whose videos interleave in path order
            index.commit([Entry(f"/lib/v{2 * i + half}.mp4", f"s{2 * i + half}", 1, 1.0, 1, 1.0, "", 0, 0)
                          for i in range(4)], [np.ones((1, 512), np.float32)] * 4, spans)
        opened = []
        real = Index._shard
        monkeypatch.setattr(Index, "_shard", lambda self, shard: opened.append(shard) or real(self, shard))
        index.refresh_search()
    assert len(opened) == 2 == len(set(opened))


def test_a_reader_following_promotes_holds_two_stores_at_most():
    """Each promote leaves a store open for the requests still on it; the one before it is closed, so a page that
    lives through many promotes does not pile up connections."""
    from s3d_retrieval.client.library.reader import Reader

    class Named:  # a store opened by a name; `points` is where the name points now
        points, opened = 0, []

        def __init__(self):
            self.target, self.closed = Named.points, False
            Named.opened.append(self)

        def resolve(self):
            return Named.points

        def view(self, lender, kind, nprobe):
            return object()

        def outdated(self, view):
            return False

        def close(self):
            self.closed = True

    reader = Reader(Named)
    first = reader.current()
    for promote in range(1, 5):
        Named.points = promote
        now = reader.current()
        assert now.store.target == promote and now.store is not first.store
        assert sum(not store.closed for store in Named.opened) == 2  # the current one and the one just left
    reader.close()
    assert all(store.closed for store in Named.opened) and len(Named.opened) == 5
