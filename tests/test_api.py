"""The Python API (`from s3d_retrieval import Client, AsyncClient`) against the embedded server: the documents it
returns are the CLI's for the same call, its failures are the CLI's lines as exceptions, the asyncio client
answers as the sync one, and a wheel installed into a fresh virtualenv brings nothing but `s3d_retrieval`."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import s3d_retrieval
from s3d_retrieval import AsyncClient, Client, Error, IndexFolderError, ServerError
from s3d_retrieval.client.cli import main
from tests.conftest import write_clip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("api") / "videos"
    folder.mkdir()
    for i, frames in enumerate((40, 70, 25)):
        write_clip(folder / f"clip{i}.avi", frames, 10, (64, 64), "MJPG", seed=i)
    (folder / "broken.avi").write_bytes(b"\0" * 64)
    return folder


def cli_json(server, capsys, *args: str) -> dict:
    assert main(["--server", f"127.0.0.1:{server.port}", *args]) in (0, 1)  # 1: a bad file was named
    return json.loads(capsys.readouterr().out)


def test_the_client_answers_as_the_cli(server, library, tmp_path, capsys):
    videos = sorted(str(p) for p in library.glob("clip*.avi"))
    index = tmp_path / "lib.idx"
    with Client(f"127.0.0.1:{server.port}", timeout=30) as client:
        assert client.embed_text("playing guitar").shape == (1, 512)
        clip = client.embed_video(videos[1])
        assert clip.sampling == client.sampling() and clip.embeddings.shape == (len(clip.spans), 512)
        lines, done = [], []
        stats = client.index(library, index=index, sampling=client.sampling(size=64), on_commit=lines.append,
                             progress=lambda n, total: done.append((n, total)))
        assert (stats.added, [Path(p).name for p, _ in stats.failed]) == (3, ["broken.avi"])  # reported, not raised
        assert lines and lines[0].startswith("committed ") and done == [(1, 3), (2, 3), (3, 3)]  # broken.avi: probed
        asked = dict(top=2, moments=2, like=[f"{videos[1]}@1"])
        result = client.search(["playing guitar", "a dog"], index=index, **asked)
        assert result.as_json() == cli_json(server, capsys, "search", "playing guitar", "a dog", "--index",
                                             str(index), "--top", "2", "--moments", "2", "--like",
                                             f"{videos[1]}@1", "--json")
        files = client.search("water", videos=[*videos, str(library / "broken.avi")],
                              sampling=client.sampling(size=64))
        assert [v for v, _ in files.errors] == [str(library / "broken.avi")]
        assert files.as_json() == cli_json(server, capsys, "search", "water", "--videos", *videos,
                                           str(library / "broken.avi"), "--size", "64", "--json")
        one = client.search("water", videos=videos[2], sampling=client.sampling(size=64))  # one path, not letters
        assert [m.video for m in one.matches[0]] == [videos[2]] and not one.errors
        under = client.search("water", index=index, under=library, glob="*clip[01].avi", top=5)  # one folder
        assert {Path(m.video).name for m in under.matches[0]} == {"clip0.avi", "clip1.avi"}
        assert client.remove(Path(videos[0]), index=index) == 1
        left = {m.video for m in client.search("water", index=index, top=5).matches[0]}
        assert left == set(videos[1:])
        with pytest.raises(IndexFolderError, match="no index here") as missing:
            client.search("water", index=tmp_path / "nothing")
        with pytest.raises(ValueError, match="index= .* or videos="):
            client.search("water")
    assert isinstance(missing.value, Error)
    with Client("127.0.0.1:1", wait=0) as away, pytest.raises(ServerError, match="cannot reach the model server"):
        away.ready()


def test_the_async_client_answers_as_the_sync_one(server, library, tmp_path):
    index = tmp_path / "lib.idx"
    address = f"127.0.0.1:{server.port}"
    with Client(address) as client:
        client.index([library], index=index, sampling=client.sampling(size=64))
        expected = client.search(["a dog", "water"], index=index, top=3, moments=2, like=f"{library}/clip2.avi@0.5")
        texts = client.embed_text(["a dog", "water"])

        clip = client.embed_video(library / "clip1.avi", client.sampling(size=64))
        files = client.search("a dog", videos=sorted(library.glob("clip*.avi")), sampling=client.sampling(size=64))

    async def run() -> tuple:
        async with AsyncClient(address, concurrency=2) as aio:
            searched, embedded, version = await asyncio.gather(
                aio.search(["a dog", "water"], index=index, top=3, moments=2, like=f"{library}/clip2.avi@0.5"),
                aio.embed_text(["a dog", "water"]), aio.ready())
            asked = aio.session.requests  # the asyncio channel's own: the search's text, the text, readiness
            stats = await aio.index(library, index=tmp_path / "again.idx", sampling=await aio.sampling(size=64))
            video = await aio.embed_video(library / "clip1.avi", await aio.sampling(size=64))
            decoded = await aio.search("a dog", videos=sorted(library.glob("clip*.avi")),
                                       sampling=await aio.sampling(size=64))
            return searched, embedded, version, asked, await aio.status(), stats, video, decoded

    searched, embedded, version, asked, status, stats, video, decoded = asyncio.run(run())
    assert searched.as_json() == expected.as_json() and np.array_equal(embedded, texts)
    assert version == 1 and status[0][:2] == (1, "AVAILABLE") and asked == 3
    assert stats.added == 3 and np.array_equal(video.embeddings, clip.embeddings)
    assert decoded.as_json() == files.as_json()
    with pytest.raises(ValueError, match="inside the running event loop"):
        AsyncClient(address)


def test_a_fresh_virtualenv_gets_only_s3d_retrieval(server, library, tmp_path):
    source, wheels = tmp_path / "source", tmp_path / "wheels"  # a copy: no build/ of the checkout's reused
    for name in ("client", "model", "export", "serving"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(source)], check=True, capture_output=True)
    [wheel] = wheels.glob("s3d_retrieval-*.whl")
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = fresh / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    installed = {p.name for p in site.iterdir() if not p.name.endswith((".dist-info", "__pycache__"))}
    assert installed == {"s3d_retrieval"}, installed
    assert all((fresh / "bin" / name).is_file() for name in ("s3d-client", "s3d-model", "s3d-export", "s3d-serve"))
    package = site / "s3d_retrieval"  # what the model side reads beside its code came along
    assert all((package / name).is_file() for name in (
        "serving/config/batching.config", "serving/k8s/search-page/search.yaml", "model/demo/s3d-demo-tiny/saved_model.pb",
        "py.typed"))
    # Its dependencies (numpy, grpc, opencv, faiss) from this environment, without reading its .pth files (the
    # editable install's finder), so `s3d_retrieval` can only come from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = f"""
import importlib.util, json, sys
import s3d_retrieval
from s3d_retrieval import Client
assert s3d_retrieval.__file__.startswith({str(site)!r}), s3d_retrieval.__file__
assert all(importlib.util.find_spec(name) is None for name in ("client", "model", "export", "serving"))
with Client("127.0.0.1:{server.port}") as c:
    print(json.dumps(c.search("water", videos=[{str(library / 'clip0.avi')!r}], sampling=c.sampling(size=64)).as_json()))
assert "tensorflow" not in sys.modules
"""
    done = subprocess.run([str(python), "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    with Client(f"127.0.0.1:{server.port}") as client:
        here = client.search("water", videos=[str(library / "clip0.avi")], sampling=client.sampling(size=64))
    assert json.loads(done.stdout) == here.as_json()
    # the checkout's, here (through the editable install's tree of links)
    assert Path(s3d_retrieval.__file__).resolve() == ROOT / "client" / "s3d_retrieval" / "__init__.py"
