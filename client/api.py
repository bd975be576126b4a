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
from typing import Any

import numpy as np

from s3d_retrieval.client.decode.video import Sampling, model_sampling
from s3d_retrieval.client.defaults import (LOCK_WAIT, MODEL_NAME, SENTENCES_PER_REQUEST, SHORT_WAIT, TIMEOUT,
                                           WINDOWS_PER_REQUEST)
from s3d_retrieval.client.library.evalset import load_evalset
from s3d_retrieval.client.library.evaluate import Evaluation, evaluate
from s3d_retrieval.client.library.filters import Filters
from s3d_retrieval.client.library.index import Folder, location
from s3d_retrieval.client.library.indexing import Stats, index_videos
from s3d_retrieval.client.library.like import Like
from s3d_retrieval.client.library.merge import MergeStats, merge
from s3d_retrieval.client.library.promote import GateRefused, NameError_, Step, move, rollback_step
from s3d_retrieval.client.library.reader import Reader
from s3d_retrieval.client.library.search import Result, embed_one, search, search_index
from s3d_retrieval.client.library.store import Location, Store, StoreError
from s3d_retrieval.client.library.walk import Shard
from s3d_retrieval.client.transport.aio import AsyncSession
from s3d_retrieval.client.transport.session import (Options, Pinned, ServerError, Session, VersionNotServed,
                                                    default_server, served_text)

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


def options(address: str | None = None, *, model: str = MODEL_NAME, timeout: float = TIMEOUT,
            wait: float = SHORT_WAIT, tls: bool = False, tls_ca: str | Path | None = None,
            windows_per_request: int = WINDOWS_PER_REQUEST, sentences_per_request: int = SENTENCES_PER_REQUEST,
            concurrency: int = 4, float_input: bool = False, log: Callable[[str], None] | None = None) -> Options:
    """The transport's settings, one keyword per CLI flag, with its defaults."""
    return Options(address=address or default_server(), model=model, timeout=timeout, wait=wait, tls=tls,
                   tls_ca=Path(tls_ca) if tls_ca else None, windows_per_request=windows_per_request,
                   sentences_per_request=sentences_per_request, concurrency=concurrency, float_input=float_input,
                   log=log)


class Client:
    """`with Client("localhost:8500") as c: c.search(["playing guitar"], index="lib.idx")`.

    `address`: the model server's gRPC HOST:PORT; by default $S3D_SERVER, else localhost:8500.
    Keywords as the CLI's global flags: `model`, `timeout` (seconds per call), `wait` (seconds of patience while
    the server is UNAVAILABLE, retried with jittered back-off; 10 by default, the CLI's `index` uses 300),
    `tls`/`tls_ca`, `windows_per_request`, `sentences_per_request`, `concurrency`, `float_input`, `lock_wait`
    (seconds a writer of an index waits for another), `log` (where "waiting for the server" notes go).
    """

    def __init__(self, address: str | None = None, *, lock_wait: float = LOCK_WAIT,
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
        """The index opened for reading, once per client: its view is loaded again only when it changed (or the
        name it was given by now points at another index)."""
        where = location(index)
        with self._opening:
            if where not in self._readers:
                self._readers[where] = Reader(functools.partial(where.open, self.options.model, read_only=True,
                                                                timeout=self.options.timeout))
            return self._readers[where]

    # --- the model server ---------------------------------------------------------------------------------

    def ready(self) -> int:
        """The newest model version served (AVAILABLE), or ServerError saying what is wrong."""
        return self.session.ensure_ready()

    def status(self) -> list[tuple[int, str, int, str]]:
        """(version, state, error code, error message) of every version the server knows."""
        return self.session.status()

    def labels(self) -> dict[str, int]:
        """The version labels the server defines (of `stable` and `canary`) and the versions they name."""
        return self.session.labels()

    def metadata(self, *, model_version: int | None = None, model_label: str | None = None) -> tuple[int, Any]:
        """(version, SignatureDefMap) of a version (by number or label; default: the server's choice)."""
        return self.session.metadata(model_version, model_label)

    def model_version(self, model_version: int | None = None, model_label: str | None = None) -> int:
        """The version asked for (by number, or by a label the server defines), else the one a new index takes:
        `stable`'s if the server defines it, else the newest served; checked to be served."""
        if model_version is not None and model_label is not None:
            raise ValueError("give a model version or a label (--model-version, --model-label), not both")
        if model_label is not None:
            version = self.session.label(model_label)
            if version is None:
                raise ServerError(f"the model server at {self.options.address} has no version label "
                                  f"{model_label!r} (it serves {self._served()}); name a version or a label it has")
            return self._served_version(version)
        return self._served_version(model_version) if model_version is not None else self.session.default_version()

    def _served(self, versions: list[int] | None = None) -> str:
        """What the server serves, for messages."""
        served = versions if versions is not None else sorted(v for v, state, _, _ in self.status()
                                                              if state == "AVAILABLE")
        return served_text(served, self.session.labels())

    def _served_version(self, version: int, where: str | None = None) -> int:
        """`version` if it is served, else one line naming it (and the index `where` that needs it) and what is
        served."""
        try:
            return self.session.ensure_ready(version)
        except VersionNotServed as err:
            needs = f"{where} holds model version {version}, which" if where else f"model version {version}"
            what = f"serve version {version} again (models.config)" + (
                ", or rebuild the index with a served version and promote it" if where else "")
            raise VersionNotServed(f"{needs} the model server at {self.options.address} does not serve (it serves "
                                   f"{self._served(err.served)}): {what}", version, err.served) from None

    def pinned(self, model_version: int | None = None, model_label: str | None = None) -> Pinned:
        """This client's session with every request naming one version (`model_version`)."""
        return Pinned(self.session, self.model_version(model_version, model_label))

    def session_for(self, version: int | None, where: str) -> Pinned:
        """The session for the index `where` holding `version`, checked to be served (an empty index of an
        earlier release holds none: the one a new index takes)."""
        return self.pinned() if version is None else Pinned(self.session, self._served_version(version, where))

    def sampling(self, *, mode: str = "segments", frames: int | None = None, fps: float | None = None,
                 size: int | None = None, stride: float | None = None, model_version: int | None = None) -> Sampling:
        """How videos are cut into windows: the model version's own sampling (its preprocessing signature; default
        the version a new index takes), with any setting given here winning."""
        return model_sampling(self.pinned(model_version).preprocessing(), mode, frames, fps, size, stride)

    def embed_text(self, sentences: Queries, *, model_version: int | None = None,
                   model_label: str | None = None) -> np.ndarray:
        """[N, 512] float32: one embedding per sentence (the server tokenises), by the version asked (default:
        the one a new index takes)."""
        return self.pinned(model_version, model_label).embed_text(_list(sentences))

    def embed_video(self, path: str | Path, sampling: Sampling | None = None, *, model_version: int | None = None,
                    model_label: str | None = None) -> VideoWindows:
        """A video's window embeddings by the version asked (default: the one a new index takes); VideoError if
        it cannot be read."""
        session = self.pinned(model_version, model_label)
        sampling = sampling or model_sampling(session.preprocessing())
        embeddings, spans = embed_one(session, os.fspath(path), sampling)
        return VideoWindows(os.fspath(path), embeddings, spans, sampling)

    # --- a video library ----------------------------------------------------------------------------------

    def search(self, queries: Queries = (), *, index: Where | None = None,
               videos: Sequence[str | Path] | None = None, top: int = 5, moments: int = 1, like: Likes = (),
               under: Sequence[str | Path] = (), glob: str | None = None, min_duration: float | None = None,
               max_duration: float | None = None, kind: str | None = None, nprobe: int | None = None,
               sampling: Sampling | None = None, model_version: int | None = None,
               model_label: str | None = None) -> Result:
        """Rank an index's videos (`index=`: a folder or a `Milvus` collection, or a name `promote` points at one;
        read only, kept open for the next search) or video files decoded now (`videos=`) for each text query and
        each liked moment (`like="VIDEO@SECONDS"` or a `Like`); `result.as_json()` is the document `s3d-client
        search --json` prints for the same call. An index is searched with the model version that embedded it,
        whatever else is served (one line, VersionNotServed, when it is not); files with the version asked
        (`model_version`, `model_label`; default `stable`'s, else the newest). Filters, `kind` ("exact" or "ivf")
        and `nprobe` apply to an index; `sampling` to files (default: the model version's)."""
        queries, likes = _asked(queries, like, index, videos, top, moments)
        if index is not None:
            if (model_version, model_label) != (None, None):
                raise ValueError("model_version and model_label are for videos=: an index is searched with the "
                                 "model version that embedded it")
            filters = Filters(tuple(_paths(under)), glob, min_duration, max_duration)
            store, view = self.reader(index).current(kind, nprobe)
            return search_index(self.session_for(view.model_version, store.where), queries, store, view, top, filters,
                                moments, likes)
        session = self.pinned(model_version, model_label)
        return search(session, queries, _paths(videos), sampling or model_sampling(session.preprocessing()), top,
                      moments, likes)

    def _writer(self, where: Where, sampling: Sampling | None = None, create: bool = False,
                model_version: int | None = None, model_label: str | None = None) -> Store:
        """The index opened for writing (what a name points at now): a folder's changes wait up to `lock_wait`
        for another writer, saying so once; a Milvus collection takes many writers at once. A new one takes
        `sampling` and the version asked, else the version a new index takes and its sampling; an existing one
        must hold the version asked."""
        asked = self.model_version(model_version, model_label) if (model_version, model_label) != (None, None) \
            else None
        chosen: list[int] = []

        def new_version() -> int:  # asked once, whichever of the index and its sampling asks first
            chosen[:] = chosen or [asked if asked is not None else self.session.default_version()]
            return chosen[0]

        return location(where).open(self.options.model, sampling=sampling, create=create, lock_wait=self.lock_wait,
                                    log=self.log, timeout=self.options.timeout,
                                    new_sampling=lambda: self.sampling(model_version=new_version()),
                                    model_version=asked, new_version=new_version)

    def index(self, paths: str | Path | Sequence[str | Path], *, index: Where, flush_every: int = 16,
              shard: Shard | str | None = None, sampling: Sampling | None = None,
              progress: Callable[[int, int], None] | None = None, on_commit: Callable[[str], None] | None = None,
              bar: bool = False, model_version: int | None = None, model_label: str | None = None) -> Stats:
        """Embed video files (or everything under folders) into the index at `index` (made if missing; a name
        `promote` made writes into what it points at), then bring its search structure up to date. Every video is
        embedded by the index's model version; a new index takes `model_version` (or `model_label`'s), else
        `stable`'s if the server defines it, else the newest served, and `sampling`, else that version's. An
        existing index asked for another version is refused. `shard` ("I/N"): only that share of the files.
        `progress(done, total)` after each video; `on_commit(line)` after each group of videos is committed;
        `bar`: a progress bar on stderr (the CLI's, on a terminal). Unreadable videos are in `stats.failed`."""
        self.ready()  # before creating anything
        with self._writer(index, sampling, True, model_version, model_label) as opened:
            stats = index_videos(self.session_for(opened.model_version, opened.where), opened, _paths(paths), flush_every,
                                 bar, on_commit, Shard.parse(shard) if isinstance(shard, str) else shard, progress)
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

    def promote(self, name: Where, target: Where, *, eval_csv: str | Path | None = None,
                videos: str | Path | None = None, force: bool = False) -> Promotion:
        """Point `name` (a path, or a `Milvus` alias) at the index `target` in one atomic step; every reader given
        the name follows it. With `eval_csv` and `videos` (eval's labelled set), the index in service and `target`
        are measured on it first, read only, each with its own model version, and the promote is refused
        (GateRefused, both figures) unless `target`'s R@1 is at least the other's; `force` promotes anyway (and
        whatever the server serves). Refused, nothing changed: a `target` that is no index of this model or whose
        version is not served, a `name` that is a real index or already points at `target`, a set naming videos
        `target` lacks."""
        new = location(target)
        named = location(name).name(self.lock_wait)
        if eval_csv is not None and videos is None:
            raise ValueError("--eval needs --videos (the folder holding the labelled set's videos)")
        evalset = load_evalset(Path(eval_csv), Path(videos)) if eval_csv is not None and videos is not None else None
        with named.connected():  # everything that can refuse is asked before the name is locked
            current = named.points_at()
            if current is not None and named.same(current) == named.same(new):
                raise NameError_(f"{named} points at {named.same(new)} already")
            now_version = self._index_version(new, served=not force)
            before_version = self._index_version(current, served=False, gone=None) if current else None
            figures: list[str] = []
            if evalset is not None:
                scored = [(named.same(where), self._gate_eval(where, evalset)) for where in [current, new] if where]
                figures = [_figures(label, result) for label, result in scored]
                (was, old), *rest = scored
                worse = bool(rest) and rest[0][1].text_to_video["R@1"] < old.text_to_video["R@1"]
                if worse and not force:
                    raise GateRefused(f"{named}: {named.same(new)} ranks worse than {was} on "
                                      f"{eval_csv} (R@1 {rest[0][1].text_to_video['R@1']:.3f} < "
                                      f"{old.text_to_video['R@1']:.3f}); nothing changed (--force promotes anyway)",
                                      figures)
        with named.locked():
            if named.points_at() != current:
                raise NameError_(f"{named} was moved while this promote measured it; run it again")
            move(named, new, [*named.history(), Step.now(named.same(new), now_version)])
        return Promotion(str(named), named.same(current) if current else None, before_version, named.same(new),
                         now_version, figures)

    def rollback(self, name: Where) -> Promotion:
        """Point `name` back at the index it pointed at before its last promote (its history, beside it), if that
        index is still there and its version served."""
        named = location(name).name(self.lock_wait)
        with named.connected():
            now, before, back = self._rollback_to(named)
        with named.locked():
            if self._rollback_to(named)[2] != back:
                raise NameError_(f"{named} was moved meanwhile; run rollback again")
            move(named, back, named.history()[:-1])
        return Promotion(str(named), now.target, now.model_version, before.target, before.model_version, [])

    def _rollback_to(self, named) -> tuple[Step, Step, Location]:
        """The name's last promote, the one before, and that one's index (checked: where the history says the name
        points, an index of this model, its version served)."""
        now, before = rollback_step(named)
        current = named.points_at()
        if current is None or named.same(current) != now.target:
            raise NameError_(f"{named} points at {named.same(current) if current else 'nothing'}, not at {now.target} "
                             f"as its history says: point it with promote")
        back = named.location(before.target)
        self._index_version(back)
        return now, before, back

    def _index_version(self, where: Location, served: bool = True, gone: object = ...) -> int | None:
        """The model version of the index at `where`, opened for reading: refused (one line) if it is no index of
        this model, or (`served`) if its version is not served; `gone`: what to say for an index no longer there
        instead of refusing."""
        try:
            with where.open(self.options.model, read_only=True, timeout=self.options.timeout) as store:
                version, at = store.model_version, store.where
        except StoreError:
            if gone is ...:
                raise
            return None
        if served:
            self.session_for(version, at)
        return version

    def _gate_eval(self, where: Location, evalset) -> Evaluation:
        with where.open(self.options.model, read_only=True, timeout=self.options.timeout) as store:
            return evaluate(self.session_for(store.model_version, store.where), evalset, index=store, add=False)

    def evaluate(self, csv: str | Path, videos: str | Path, *, protocol: str = "max", windows: int = 10,
                 index: Where | None = None, sampling: Sampling | None = None,
                 errors: list[tuple[str, str]] | None = None, model_version: int | None = None,
                 model_label: str | None = None) -> Evaluation:
        """Retrieval quality on a labelled set (R@K, median rank, moments), as `s3d-client eval`, with the version
        asked (default as for a new index); `index` reuses (and adds to) an index's windows, with its version.
        Videos that could not be used go to `errors`."""
        if windows < 1:
            raise ValueError("windows (--windows) must be at least 1")
        evalset = load_evalset(Path(csv), Path(videos))
        self.ready()
        errors = [] if errors is None else errors
        if index is None:
            session = self.pinned(model_version, model_label)
            result = evaluate(session, evalset, protocol, windows, sampling, errors=errors)
        else:
            with self._writer(index, sampling, True, model_version, model_label) as opened:
                result = evaluate(self.session_for(opened.model_version, opened.where), evalset, protocol, windows,
                                  index=opened, errors=errors)
                opened.refresh_search(wait=False)  # brings the search structure up to videos it added
        result.excluded += [Path(v).stem for v, _ in errors]
        return result


@dataclass(frozen=True)
class Promotion:
    """What `promote` and `rollback` did: the name, the index it pointed at before (None: none) and now, their
    model versions, and the eval gate's figures (R@1, R@5, MdR of each) when one was asked."""

    name: str
    before: str | None
    before_version: int | None
    now: str
    now_version: int | None
    figures: list[str]

    def summary(self) -> str:
        """`NAME: old (model version 1) -> new (model version 2)`."""
        old = f"{self.before} (model version {self.before_version})" if self.before else "(nothing)"
        return f"{self.name}: {old} -> {self.now} (model version {self.now_version})"


def _figures(label: str, result: Evaluation) -> str:
    t2v = result.text_to_video
    return f"{label}: R@1 {t2v['R@1']:.3f}, R@5 {t2v['R@5']:.3f}, MdR {t2v['MdR']:g}"


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

    def __init__(self, address: str | None = None, *, lock_wait: float = LOCK_WAIT,
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

    async def labels(self) -> dict[str, int]:
        return await self.session.labels()

    async def metadata(self, *, model_version: int | None = None, model_label: str | None = None
                       ) -> tuple[int, Any]:
        return await self.session.metadata(model_version, model_label)

    async def model_version(self, model_version: int | None = None, model_label: str | None = None) -> int:
        return await asyncio.to_thread(self.sync.model_version, model_version, model_label)

    async def sampling(self, *, mode: str = "segments", frames: int | None = None, fps: float | None = None,
                       size: int | None = None, stride: float | None = None,
                       model_version: int | None = None) -> Sampling:
        version = await self.model_version(model_version)
        return model_sampling(await self.session.preprocessing(version), mode, frames, fps, size, stride)

    async def embed_text(self, sentences: Queries, *, model_version: int | None = None,
                         model_label: str | None = None) -> np.ndarray:
        return await self.session.embed_text(_list(sentences), await self.model_version(model_version, model_label))

    async def embed_video(self, path: str | Path, sampling: Sampling | None = None, *,
                          model_version: int | None = None, model_label: str | None = None) -> VideoWindows:
        return await asyncio.to_thread(functools.partial(self.sync.embed_video, path, sampling,
                                                         model_version=model_version, model_label=model_label))

    async def search(self, queries: Queries = (), *, index: Where | None = None,
                     videos: Sequence[str | Path] | None = None, top: int = 5, moments: int = 1, like: Likes = (),
                     under: Sequence[str | Path] = (), glob: str | None = None, min_duration: float | None = None,
                     max_duration: float | None = None, kind: str | None = None, nprobe: int | None = None,
                     sampling: Sampling | None = None, model_version: int | None = None,
                     model_label: str | None = None) -> Result:
        asked, likes = _asked(queries, like, index, videos, top, moments)
        if index is None:
            return await asyncio.to_thread(functools.partial(
                self.sync.search, asked, videos=videos, top=top, moments=moments, like=likes, sampling=sampling,
                model_version=model_version, model_label=model_label))
        store, view = await asyncio.to_thread(lambda: self.sync.reader(index).current(kind, nprobe))
        session = await asyncio.to_thread(self.sync.session_for, view.model_version, store.where)
        texts = await self.session.embed_text([*asked, ""], session.version) if asked else None
        filters = Filters(tuple(_paths(under)), glob, min_duration, max_duration)
        return await asyncio.to_thread(search_index, session, asked, store, view, top, filters, moments, likes,
                                       None if texts is None else lambda sentences: texts)

    async def index(self, paths: str | Path | Sequence[str | Path], *, index: Where, flush_every: int = 16,
                    shard: Shard | str | None = None, sampling: Sampling | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    on_commit: Callable[[str], None] | None = None, bar: bool = False,
                    model_version: int | None = None, model_label: str | None = None) -> Stats:
        """`Client.index` in a worker thread (`progress` and `on_commit` are called from it)."""
        return await asyncio.to_thread(functools.partial(
            self.sync.index, paths, index=index, flush_every=flush_every, shard=shard, sampling=sampling,
            progress=progress, on_commit=on_commit, bar=bar, model_version=model_version, model_label=model_label))

    async def remove(self, paths: str | Path | Sequence[str | Path], *, index: Where) -> int:
        return await asyncio.to_thread(self.sync.remove, paths, index=index)

    async def merge(self, shards: Sequence[str | Path], *, index: str | Path) -> MergeStats:
        return await asyncio.to_thread(self.sync.merge, shards, index=index)

    async def vacuum(self, *, index: Where, older_than: float | None = None) -> str:
        return await asyncio.to_thread(functools.partial(self.sync.vacuum, index=index, older_than=older_than))

    async def promote(self, name: Where, target: Where, *, eval_csv: str | Path | None = None,
                      videos: str | Path | None = None, force: bool = False) -> Promotion:
        return await asyncio.to_thread(functools.partial(self.sync.promote, name, target, eval_csv=eval_csv,
                                                         videos=videos, force=force))

    async def rollback(self, name: Where) -> Promotion:
        return await asyncio.to_thread(self.sync.rollback, name)

    async def evaluate(self, csv: str | Path, videos: str | Path, *, protocol: str = "max", windows: int = 10,
                       index: Where | None = None, sampling: Sampling | None = None,
                       errors: list[tuple[str, str]] | None = None, model_version: int | None = None,
                       model_label: str | None = None) -> Evaluation:
        return await asyncio.to_thread(functools.partial(
            self.sync.evaluate, csv, videos, protocol=protocol, windows=windows, index=index, sampling=sampling,
            errors=errors, model_version=model_version, model_label=model_label))
