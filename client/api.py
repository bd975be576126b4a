"""The Python API: one client object for an application's code (a web backend, a notebook, a pipeline step).

`Client` holds one gRPC channel to a TF Serving model and offers the CLI's verbs as methods, with the CLI's
defaults as keyword arguments; the CLI (`s3d_retrieval.client.cli`) and the search page are its users. An index
it searched stays open, its search structure loaded, until the index changes or the client closes, so a search
costs the search (`client.library.reader`). Failures
raise `s3d_retrieval.Error` subclasses with the CLI's one-line messages; a video that cannot be read is reported
in the result (`Result.errors`, `Stats.failed`), not raised, as the CLI goes on past it. No TensorFlow is
imported. `AsyncClient` offers the same methods as coroutines.
"""
from __future__ import annotations

import asyncio
import functools
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s3d_retrieval.client.decode.video import Sampling, model_sampling
from s3d_retrieval.client.defaults import (GRPC_PORT, LOCK_WAIT, MODEL_NAME, SENTENCES_PER_REQUEST, SHORT_WAIT, TIMEOUT,
                                           WINDOWS_PER_REQUEST)
from s3d_retrieval.client.library.evalset import load_evalset
from s3d_retrieval.client.library.evaluate import Evaluation, evaluate
from s3d_retrieval.client.library.filters import Filters
from s3d_retrieval.client.library.index import Folder, location
from s3d_retrieval.client.library.indexing import Stats, index_videos
from s3d_retrieval.client.library.like import Like
from s3d_retrieval.client.library.merge import MergeStats, merge
from s3d_retrieval.client.library.reader import Reader
from s3d_retrieval.client.library.search import EmbedText, Result, embed_one, search, search_index
from s3d_retrieval.client.library.store import Location, Store
from s3d_retrieval.client.library.walk import Shard
from s3d_retrieval.client.transport.aio import AsyncSession
from s3d_retrieval.client.transport.session import Options, Session

Queries = str | Sequence[str]
Where = str | Path | Location  # an index: its folder, or another store's location (`Milvus(uri, collection)`)
Likes = str | Like | Sequence[str | Like]


@dataclass(frozen=True)
class VideoWindows:
    """A video's windows as the model sees them: one embedding per window, its time span, and the sampling that
    cut them (the served model's own unless asked otherwise)."""

    path: str
    embeddings: np.ndarray  # [W, 512] float32
    spans: np.ndarray  # [W, 2] start, end seconds
    sampling: Sampling


def stderr_note(line: str) -> None:
    """Where the CLI and the search service say what they wait for (a `log` for `Client`)."""
    print(f"note: {line}", file=sys.stderr)


def _list(value, kind: type = str) -> list:
    """One item (a string, a path, a `kind`) or several, as a list."""
    return [value] if isinstance(value, (str, os.PathLike, kind)) else list(value)


def _paths(value) -> list[str]:
    return [os.fspath(p) for p in _list(value)]


def checked(queries: Queries, like: Likes, top: int, moments: int) -> tuple[list[str], list[Like]]:
    """A search's text queries and liked moments, refused in one line when they cannot be searched."""
    queries, likes = _list(queries), [x if isinstance(x, Like) else Like.parse(x) for x in _list(like, Like)]
    if not queries and not likes:
        raise ValueError("search needs a text QUERY or a moment to look like (like / --like VIDEO@SECONDS)")
    if top < 1 or moments < 1:
        raise ValueError("top and moments (--top, --moments) must be at least 1")
    return queries, likes


def _asked(queries: Queries, like: Likes, index, videos, top: int, moments: int) -> tuple[list[str], list[Like]]:
    if (index is None) == (videos is None):
        raise ValueError("search needs index= (an index folder) or videos= (video files), not both")
    return checked(queries, like, top, moments)


def options(address: str = f"localhost:{GRPC_PORT}", *, model: str = MODEL_NAME, timeout: float = TIMEOUT,
            wait: float = SHORT_WAIT, tls: bool = False, tls_ca: str | Path | None = None,
            windows_per_request: int = WINDOWS_PER_REQUEST, sentences_per_request: int = SENTENCES_PER_REQUEST,
            concurrency: int = 4, float_input: bool = False, log: Callable[[str], None] | None = None) -> Options:
    """The transport's settings, one keyword per CLI flag, with its defaults."""
    return Options(address=address, model=model, timeout=timeout, wait=wait, tls=tls,
                   tls_ca=Path(tls_ca) if tls_ca else None, windows_per_request=windows_per_request,
                   sentences_per_request=sentences_per_request, concurrency=concurrency, float_input=float_input,
                   log=log)


class Client:
    """`with Client("localhost:8500") as c: c.search(["playing guitar"], index="lib.idx")`.

    Keywords as the CLI's global flags: `model`, `timeout` (seconds per call), `wait` (seconds of patience while
    the server is UNAVAILABLE, retried with jittered back-off; 10 by default, the CLI's `index` uses 300),
    `tls`/`tls_ca`, `windows_per_request`, `sentences_per_request`, `concurrency`, `float_input`, `lock_wait`
    (seconds a writer of an index waits for another), `log` (where "waiting for the server" notes go).
    """

    def __init__(self, address: str = f"localhost:{GRPC_PORT}", *, lock_wait: float = LOCK_WAIT,
                 log: Callable[[str], None] | None = None, **transport):
        self.options = options(address, log=log, **transport)
        self.lock_wait, self.log = lock_wait, log
        self.session = Session(self.options)
        self._readers: dict[Location, Reader] = {}  # every index searched, kept open until close()
        self._opening = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._opening:
            readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            reader.close()
        self.session.close()

    def reader(self, index: Where) -> Reader:
        """The index opened for reading, once per client: its view is loaded again only when it changed."""
        where = location(index)
        with self._opening:
            if where not in self._readers:
                self._readers[where] = Reader(where.open(self.options.model, read_only=True,
                                                         timeout=self.options.timeout))
            return self._readers[where]

    # --- the model server ---------------------------------------------------------------------------------

    def ready(self) -> int:
        """The model version served (AVAILABLE), or ServerError saying what is wrong."""
        return self.session.ensure_ready()

    def status(self) -> list[tuple[int, str, int, str]]:
        """(version, state, error code, error message) of every version the server knows."""
        return self.session.status()

    def metadata(self) -> tuple[int, object]:
        """(version, SignatureDefMap) of the version the server would use."""
        return self.session.metadata()

    def sampling(self, *, mode: str = "segments", frames: int | None = None, fps: float | None = None,
                 size: int | None = None, stride: float | None = None) -> Sampling:
        """How videos are cut into windows: the served model's own sampling (its preprocessing signature), with
        any setting given here winning."""
        return model_sampling(self.session.preprocessing(), mode, frames, fps, size, stride)

    def embed_text(self, sentences: Queries) -> np.ndarray:
        """[N, 512] float32: one embedding per sentence (the server tokenises)."""
        return self.session.embed_text(_list(sentences))

    def embed_video(self, path: str | Path, sampling: Sampling | None = None) -> VideoWindows:
        """A video's window embeddings; VideoError if it cannot be read."""
        sampling = sampling or self.sampling()
        embeddings, spans = embed_one(self.session, os.fspath(path), sampling)
        return VideoWindows(os.fspath(path), embeddings, spans, sampling)

    # --- a video library ----------------------------------------------------------------------------------

    def search(self, queries: Queries = (), *, index: Where | None = None,
               videos: Sequence[str | Path] | None = None, top: int = 5, moments: int = 1, like: Likes = (),
               under: Sequence[str | Path] = (), glob: str | None = None, min_duration: float | None = None,
               max_duration: float | None = None, kind: str | None = None, nprobe: int | None = None,
               sampling: Sampling | None = None) -> Result:
        """Rank an index's videos (`index=`: a folder or a `Milvus` collection, read only, kept open for the next
        search) or video files decoded now (`videos=`) for each text query and each liked moment
        (`like="VIDEO@SECONDS"` or a `Like`); `result.as_json()` is the document `s3d-client search --json`
        prints for the same call. Filters, `kind` ("exact" or "ivf") and `nprobe` apply to an index; `sampling`
        to files (default: the served model's)."""
        queries, likes = _asked(queries, like, index, videos, top, moments)
        if index is not None:
            filters = Filters(tuple(_paths(under)), glob, min_duration, max_duration)
            return self._search_index(queries, likes, index, top, moments, filters, kind, nprobe)
        self.ready()
        return search(self.session, queries, _paths(videos), sampling or self.sampling(), top, moments, likes)

    def _search_index(self, queries: list[str], likes: list[Like], index: Where, top: int, moments: int,
                      filters: Filters, kind: str | None, nprobe: int | None, embed_text: EmbedText | None = None,
                      served: int | None = None) -> Result:
        reader = self.reader(index)
        view = reader.current(kind, nprobe)
        return search_index(self.session, queries, reader.store, view, top, filters, moments, likes, embed_text,
                            served)

    def _writer(self, where: Where, sampling: Sampling | None = None, create: bool = False) -> Store:
        """The index opened for writing: a folder's changes wait up to `lock_wait` for another writer, saying so
        once; a Milvus collection takes many writers at once. A new one takes `sampling`, else the served
        model's."""
        return location(where).open(self.options.model, sampling=sampling, create=create, lock_wait=self.lock_wait,
                                    log=self.log, timeout=self.options.timeout, new_sampling=self.sampling)

    def index(self, paths: str | Path | Sequence[str | Path], *, index: Where, flush_every: int = 16,
              shard: Shard | str | None = None, sampling: Sampling | None = None,
              progress: Callable[[int, int], None] | None = None, on_commit: Callable[[str], None] | None = None,
              bar: bool = False) -> Stats:
        """Embed video files (or everything under folders) into the index at `index` (made if missing, with
        `sampling` or the served model's), then bring its search structure up to date. `shard` ("I/N"): only
        that share of the files. `progress(done, total)` after each video; `on_commit(line)` after each group
        of videos is committed; `bar`: a progress bar on stderr (the CLI's, on a terminal). Unreadable videos
        are in `stats.failed`."""
        self.ready()  # before creating anything
        with self._writer(index, sampling, create=True) as opened:
            stats = index_videos(self.session, opened, _paths(paths), flush_every, bar, on_commit,
                                 Shard.parse(shard) if isinstance(shard, str) else shard, progress)
            opened.refresh_search(wait=_changed(stats))
        return stats

    def remove(self, paths: str | Path | Sequence[str | Path], *, index: Where) -> int:
        """Remove videos (or everything under folders) from an index; the number removed."""
        with self._writer(index) as opened:
            removed = opened.remove(_paths(paths))
            opened.refresh_search(wait=bool(removed))
        return removed

    def merge(self, shards: Sequence[str | Path], *, index: Where) -> MergeStats:
        """Combine shard indexes (`index(..., shard="I/N")`) into the index at `index` (made or added to). A
        Milvus collection needs none: its writers write into it at once."""
        target = location(index)
        if not isinstance(target, Folder):
            raise ValueError("merge is for index folders: shards index straight into a Milvus collection")
        stats = merge([Path(s) for s in shards], target.path, self.options.model, self.lock_wait, self.log)
        with self._writer(target) as opened:
            opened.refresh_search(wait=bool(stats.added or stats.replaced))
        return stats

    def vacuum(self, *, index: Where, older_than: float | None = None) -> str:
        """Delete what crashed or raced writers left that no video uses (a folder: files, if no writer is at work;
        Milvus: windows no video names, made over `older_than` seconds ago); says what it removed."""
        if older_than is not None and isinstance(location(index), Folder):  # refused before the open sweeps
            raise ValueError(f"{index}: an index folder tells what dead writers left by its free lock, whatever "
                             f"their age; --older-than is for --milvus")
        with self._writer(index) as opened:
            return opened.vacuum(older_than)

    def evaluate(self, csv: str | Path, videos: str | Path, *, protocol: str = "max", windows: int = 10,
                 index: Where | None = None, sampling: Sampling | None = None,
                 errors: list[tuple[str, str]] | None = None) -> Evaluation:
        """Retrieval quality on a labelled set (R@K, median rank, moments), as `s3d-client eval`; `index` reuses
        (and adds to) an index's windows. Videos that could not be used go to `errors`."""
        if windows < 1:
            raise ValueError("windows (--windows) must be at least 1")
        evalset = load_evalset(Path(csv), Path(videos))
        self.ready()
        errors = [] if errors is None else errors
        if index is None:
            result = evaluate(self.session, evalset, protocol, windows, sampling or self.sampling(), errors=errors)
        else:
            with self._writer(index, sampling, create=True) as opened:
                result = evaluate(self.session, evalset, protocol, windows, index=opened, errors=errors)
                opened.refresh_search(wait=False)  # brings the search structure up to videos it added
        result.excluded += [Path(v).stem for v, _ in errors]
        return result


def _changed(stats: Stats) -> bool:
    """Whether an `index` run changed the entries: if not, it brings the search structure up to date only when no
    other writer is at work (a live one does it itself; a killed one's is brought up to date by this run)."""
    return bool(stats.added or stats.replaced or stats.reused)


class AsyncClient:
    """`async with AsyncClient("localhost:8500") as c: await c.search(["playing guitar"], index="lib.idx")`.

    `Client`'s methods and keywords, as coroutines, for asyncio web backends. The model server is asked through
    grpc.aio (`ready`, `status`, `metadata`, `sampling`, `embed_text`, and the text of `search(index=...)`);
    the CPU and disk work runs in a worker thread so the event loop stays free: ranking an index, and the verbs
    that decode or write (`embed_video`, `search(videos=...)`, `index`, `remove`, `merge`, `evaluate`), which
    are `Client`'s, streaming videos as it does. Create it inside the running event loop.
    """

    def __init__(self, address: str = f"localhost:{GRPC_PORT}", *, lock_wait: float = LOCK_WAIT,
                 log: Callable[[str], None] | None = None, **transport):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ValueError("create AsyncClient inside the running event loop (in a coroutine): gRPC's "
                             "asyncio channels belong to one loop") from None
        self.options = options(address, log=log, **transport)
        self.session = AsyncSession(self.options)
        self.sync = Client(address, lock_wait=lock_wait, log=log, **transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.session.close()
        await asyncio.to_thread(self.sync.close)  # waits for its worker threads: not on the loop

    async def ready(self) -> int:
        return await self.session.ensure_ready()

    async def status(self) -> list[tuple[int, str, int, str]]:
        return await self.session.status()

    async def metadata(self) -> tuple[int, object]:
        return await self.session.metadata()

    async def sampling(self, *, mode: str = "segments", frames: int | None = None, fps: float | None = None,
                       size: int | None = None, stride: float | None = None) -> Sampling:
        return model_sampling(await self.session.preprocessing(), mode, frames, fps, size, stride)

    async def embed_text(self, sentences: Queries) -> np.ndarray:
        return await self.session.embed_text(_list(sentences))

    async def embed_video(self, path: str | Path, sampling: Sampling | None = None) -> VideoWindows:
        return await asyncio.to_thread(self.sync.embed_video, path, sampling or await self.sampling())

    async def search(self, queries: Queries = (), *, index: Where | None = None,
                     videos: Sequence[str | Path] | None = None, top: int = 5, moments: int = 1, like: Likes = (),
                     under: Sequence[str | Path] = (), glob: str | None = None, min_duration: float | None = None,
                     max_duration: float | None = None, kind: str | None = None, nprobe: int | None = None,
                     sampling: Sampling | None = None) -> Result:
        asked, likes = _asked(queries, like, index, videos, top, moments)
        if videos is not None:
            return await asyncio.to_thread(functools.partial(
                self.sync.search, asked, videos=videos, top=top, moments=moments, like=likes,
                sampling=sampling or await self.sampling()))
        served = await self.ready()
        texts = await self.session.embed_text([*asked, ""]) if asked else None
        filters = Filters(tuple(_paths(under)), glob, min_duration, max_duration)
        return await asyncio.to_thread(self.sync._search_index, asked, likes, index, top, moments, filters, kind,
                                       nprobe, lambda sentences: texts, served)

    async def index(self, paths: str | Path | Sequence[str | Path], *, index: Where, flush_every: int = 16,
                    shard: Shard | str | None = None, sampling: Sampling | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    on_commit: Callable[[str], None] | None = None, bar: bool = False) -> Stats:
        """`Client.index` in a worker thread (`progress` and `on_commit` are called from it)."""
        return await asyncio.to_thread(functools.partial(
            self.sync.index, paths, index=index, flush_every=flush_every, shard=shard, sampling=sampling,
            progress=progress, on_commit=on_commit, bar=bar))

    async def remove(self, paths: str | Path | Sequence[str | Path], *, index: Where) -> int:
        return await asyncio.to_thread(self.sync.remove, paths, index=index)

    async def merge(self, shards: Sequence[str | Path], *, index: str | Path) -> MergeStats:
        return await asyncio.to_thread(self.sync.merge, shards, index=index)

    async def vacuum(self, *, index: Where, older_than: float | None = None) -> str:
        return await asyncio.to_thread(functools.partial(self.sync.vacuum, index=index, older_than=older_than))

    async def evaluate(self, csv: str | Path, videos: str | Path, *, protocol: str = "max", windows: int = 10,
                       index: Where | None = None, sampling: Sampling | None = None,
                       errors: list[tuple[str, str]] | None = None) -> Evaluation:
        return await asyncio.to_thread(functools.partial(
            self.sync.evaluate, csv, videos, protocol=protocol, windows=windows, index=index, sampling=sampling,
            errors=errors))
