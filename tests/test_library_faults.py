"""Indexing any library: a file walk that never crashes, bounded decoding, patience with the server,
version changes, and disk faults that leave the index as it was."""
from __future__ import annotations

import builtins
import errno
import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from s3d_retrieval.client.cli import main
from s3d_retrieval.client.decode.ahead import decode_ahead
from s3d_retrieval.client.library import index as index_module
from s3d_retrieval.client.library import indexing, walk
from s3d_retrieval.client.library.index import Index, IndexFolderError
from s3d_retrieval.client.library.indexing import index_videos
from s3d_retrieval.client.transport.session import Options, Pinned, Session
from tests.conftest import start_server, write_clip
from tests.test_index import SAMPLING, check_consistent, library  # noqa: F401 - the fixture

ROOT = os.geteuid() == 0


def deny(monkeypatch, module, name: str, path: Path) -> None:
    """chmod 000 `path`; as root (who reads anything) also make `module.name(path)` raise EACCES, as the
    kernel would for anyone else."""
    path.chmod(0)
    if not ROOT:
        return
    real = getattr(module, name, None) or getattr(builtins, name)

    def refusing(target, *args, **kwargs):
        if os.fspath(target) == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(module, name, refusing, raising=False)


def test_a_bad_tree_is_walked_without_a_crash(server, tmp_path, monkeypatch, capsys):
    lib = tmp_path / "lib"
    (lib / "sub").mkdir(parents=True)
    (lib / "clips.mp4").mkdir()  # a folder named like a video: walked as a folder
    good = [write_clip(lib / "a.avi", 30, 20, (80, 64), "MJPG", seed=1),
            write_clip(lib / "sub" / "b.avi", 30, 20, (80, 64), "MJPG", seed=2),
            write_clip(lib / "clips.mp4" / "c.avi", 30, 20, (80, 64), "MJPG", seed=3)]
    (lib / "gone.mp4").symlink_to(lib / "missing.mp4")
    (lib / "self.mp4").symlink_to(lib / "self.mp4")
    (lib / "sub" / "up").symlink_to(lib)  # a loop back to the root
    (lib / "random.mp4").write_bytes(np.random.default_rng(0).bytes(200_000))
    with open(lib / "huge.mkv", "wb") as f:  # 3 GB, sparse: must be refused before anything reads it all
        f.truncate(3 << 30)
    os.mkfifo(lib / "pipe.mp4")
    os.rename(write_clip(tmp_path / "bad.avi", 30, 20, (80, 64), "MJPG", seed=4),
              os.fsencode(str(lib)) + b"/bad\xff.avi")
    deny(monkeypatch, indexing, "open", write_clip(lib / "locked.avi", 30, 20, (80, 64), "MJPG", seed=5))
    (lib / "closed").mkdir()
    write_clip(lib / "closed" / "d.avi", 30, 20, (80, 64), "MJPG", seed=6)
    deny(monkeypatch, walk.os, "listdir", lib / "closed")
    hashed = []
    real_hash = indexing.file_sha256
    monkeypatch.setattr(indexing, "file_sha256", lambda p: hashed.append(p) or real_hash(p))

    code = main(["--server", f"127.0.0.1:{server.port}", "index", str(lib), "--index", str(tmp_path / "idx"),
                 "--size", "64"])
    out, err = capsys.readouterr()
    (lib / "closed").chmod(0o755)
    (lib / "locked.avi").chmod(0o644)
    assert code == 1
    assert "Traceback" not in out + err
    skipped = dict(line.removeprefix("skipped: ").rsplit(": ", 1) for line in err.splitlines())
    assert len(skipped) == len(err.splitlines()) == 9, err  # each named once, nothing else said
    assert skipped[str(lib / "gone.mp4")].startswith("broken symbolic link")
    assert skipped[str(lib / "self.mp4")] == "symbolic link loop"
    assert skipped[str(lib / "sub" / "up")].startswith("symbolic link to a folder already walked")
    assert skipped[str(lib / "random.mp4")].startswith("cannot be opened as a video")
    assert skipped[str(lib / "huge.mkv")].startswith("cannot be opened as a video")
    assert skipped[str(lib / "pipe.mp4")].startswith("not a regular file")
    assert skipped[str(lib) + "/bad\\xff.avi"].startswith("the name is not valid UTF-8")
    assert skipped[str(lib / "locked.avi")] == "cannot be read (Permission denied)"
    assert skipped[str(lib / "closed")] == "folder cannot be listed (Permission denied)"
    assert "added 3," in out and "skipped 9;" in out
    assert str(lib / "huge.mkv") not in hashed
    with Index(tmp_path / "idx", "s3d_milnce") as index:
        assert sorted(index.entries()) == sorted(map(str, good))


def test_files_that_vanish_or_change_during_the_run_are_named_and_not_committed(session, tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    clips = [write_clip(lib / f"{name}.avi", 30, 20, (80, 64), "MJPG", seed=i)
             for i, name in enumerate(("kept", "vanishes", "changes"))]
    real_walk, real_stream = indexing.walk, indexing.embed_stream

    def walk_then_delete(paths):
        found = real_walk(paths)
        clips[1].unlink()  # gone between the walk and its first read
        return found

    def stream_then_change(*args, **kwargs):
        for item, done in real_stream(*args, **kwargs):
            if item.path == str(clips[2]):  # rewritten while its windows were being embedded
                os.utime(clips[2], ns=(0, 123_456_789))
            yield item, done

    monkeypatch.setattr(indexing, "walk", walk_then_delete)
    monkeypatch.setattr(indexing, "embed_stream", stream_then_change)
    with Index(tmp_path / "idx", "s3d_milnce", SAMPLING, create=True) as index:
        stats = index_videos(session, index, [lib])
        assert sorted(index.entries()) == [str(clips[0])]
    assert dict(stats.failed) == {str(clips[1]): "vanished before it could be read",
                                  str(clips[2]): "changed while it was being indexed; run index again to add its "
                                                 "new content"}


@pytest.mark.parametrize("fault", ["shard", "database"])
def test_a_write_error_leaves_the_index_as_it_was(server, library, tmp_path, monkeypatch, capsys, fault):  # noqa: F811
    folder = tmp_path / "idx"
    args = ["--server", f"127.0.0.1:{server.port}", "index", "--index", str(folder), "--size", "64"]
    first = sorted(library.iterdir())[:2]
    assert main([*args[:3], *map(str, first), *args[3:]]) == 0
    with Index(folder, "s3d_milnce") as index:
        before = index.entries()
    shards_before = sorted(p.name for p in (folder / "shards").iterdir())
    capsys.readouterr()
    if fault == "shard":
        real = index_module.atomic_write
        calls = []

        def full_disk(path, write, *a):
            calls.append(path)
            if len(calls) == 2:  # the embeddings file is written, then the disk fills
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real(path, write, *a)

        monkeypatch.setattr(index_module, "atomic_write", full_disk)
    else:
        real_connect = sqlite3.connect

        class FailingDb:
            def __init__(self, *a, **kw):
                self.db = real_connect(*a, **kw)

            def executemany(self, *a):
                raise sqlite3.OperationalError("disk I/O error")

            def __getattr__(self, name):
                return getattr(self.db, name)

            def __enter__(self):
                return self.db.__enter__()

            def __exit__(self, *exc):
                return self.db.__exit__(*exc)

        monkeypatch.setattr(index_module.sqlite3, "connect", FailingDb)
    assert main([*args[:3], str(library), *args[3:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: cannot write to the index at {folder}")
    assert ("No space left on device" if fault == "shard" else "disk I/O error") in err
    monkeypatch.undo()
    with Index(folder, "s3d_milnce") as index:
        assert index.entries() == before
    assert sorted(p.name for p in (folder / "shards").iterdir()) == shards_before
    assert main([*args[:3], str(library), *args[3:]]) == 0  # the same command finishes the job
    check_consistent(folder, library)


def test_an_index_rides_out_a_server_restart(model_dir, library, tmp_path):  # noqa: F811
    server = start_server(model_dir)
    port, said, away = server.port, [], threading.Event()
    restarted: list = []

    def log(line: str) -> None:
        said.append(line)
        if line.startswith("committed") and not away.is_set() and not restarted:
            server.stop(grace=0)  # the pod goes away after the first commit
            restarted.append(None)
        if line.startswith("waiting up to"):
            away.set()

    def restart() -> None:
        assert away.wait(timeout=300)
        time.sleep(5)  # the scenario: a server that stays down a while (a restart), not a synchronisation
        restarted[0] = start_server(model_dir, port=port)

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        options = Options(address=f"127.0.0.1:{port}", windows_per_request=2, wait=180, log=log)
        with Session(options) as session, Index(tmp_path / "idx", "s3d_milnce", SAMPLING, create=True) as index:
            stats = index_videos(Pinned(session, 1), index, [library], flush_every=1, log=log)
    finally:
        thread.join(timeout=300)
        if restarted and restarted[0]:
            restarted[0].stop(grace=1)
    assert (stats.added, stats.failed) == (6, [])
    assert len([line for line in said if line.startswith("waiting up to")]) == 1  # said once
    assert any("answers again" in line for line in said)
    check_consistent(tmp_path / "idx", library)  # every window exactly once


def test_decoding_ahead_is_bounded_by_windows_and_stops_when_the_reader_does():
    produced, lock = [0], threading.Lock()
    videos, buffer = 2, 3

    def produce(n: int):
        for i in range(50):
            with lock:
                produced[0] += 1
            yield n, i

    consumed, bound = 0, videos * (buffer + 1)  # each feed: a full queue and one window in the producer's hand
    for n, feed in decode_ahead(range(4), produce, videos, buffer):
        for item in feed:
            assert item == (n, item[1])
            consumed += 1
            with lock:
                assert produced[0] - consumed <= bound
    assert consumed == 200

    finished = threading.Event()

    def read_one_and_stop():
        for _, feed in decode_ahead(range(4), produce, videos, buffer):
            next(feed)
            break
        finished.set()

    reader = threading.Thread(target=read_one_and_stop)
    reader.start()
    assert finished.wait(timeout=30)  # the generator's exit waits for its (cancelled) producers


def test_readers_leave_a_running_writers_files_alone(tmp_path):
    """A reader (search, the UI, merge's sources) opened while a writer is between writing a shard and committing
    it must not sweep that shard as unused; the next writer sweeps what a killed one left."""
    with Index(tmp_path, "s3d_milnce", SAMPLING, create=True):
        pass
    pending = [tmp_path / "shards" / "fresh.embeddings.npy", tmp_path / "shards" / "fresh.spans.npy",
               tmp_path / "shards" / "next.embeddings.npy.tmp"]
    for path in pending:
        path.write_bytes(b"written by a writer that has not committed yet")
    with Index(tmp_path, "s3d_milnce", read_only=True) as reader:
        assert reader.entries() == {}
        with pytest.raises(IndexFolderError, match="readonly"):
            reader._read(lambda db: db.execute("DELETE FROM meta"))
    assert all(path.exists() for path in pending)
    with Index(tmp_path, "s3d_milnce"):
        pass
    assert not any(path.exists() for path in pending)
