"""The search service: a JSON API over an index and the page that uses it (Starlette, served by uvicorn).

- `GET /api/search?q=TEXT[&q=...][&like=VIDEO@SECONDS|VIDEO@START-END][&top=K][&moments=K][&under=FOLDER]
  [&glob=PATTERN][&min_duration=S][&max_duration=S]`: the document `search --index --json` prints, ranked the
  same way; `like` searches with a moment of an indexed video (more like this), q or like at least once;
- `GET /api/videos`: the indexed videos; `GET /api/health`: the index loaded and the model version it needs,
  the model server reachable, the versions and labels it serves (503 when the index's version is not served, or
  either is not ready; `?probe=live` answers 200 while the process serves);
- `GET /api/media?video=PATH` (HTTP range requests) and `GET /api/still?video=PATH&t=SECONDS` (a JPEG): only
  for videos of the index (`Catalog.media`);
- `/` and `/static/`: the page, with no outside resources.
Every error is JSON, `{"error": "..."}`, with a status saying whose it is (4xx the request's, 503 the server's).
"""
from __future__ import annotations

import mimetypes
import sqlite3
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from s3d_retrieval.client.library.store import StoreError
from s3d_retrieval.client.library.like import Like, LikeError
from s3d_retrieval.client.library.filters import Filters
from s3d_retrieval.client.library.search import search_view
from s3d_retrieval.client.outputs.stills import jpeg_at
from s3d_retrieval.client.api import Client
from s3d_retrieval.client.transport.session import ServerError
from s3d_retrieval.client.ui.catalog import Catalog, NotServed
from s3d_retrieval.client.ui.texts import TextCache

STATIC = Path(__file__).resolve().parent / "static"  # real files: StaticFiles refuses links that lead out of it
MAX_TOP = 100  # videos a query may ask for
MAX_MOMENTS = 20  # moments per video
STILL = 240  # pixels, square
UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # gRPC codes that mean no model server answered


class BadRequest(Exception):
    """The request itself is wrong (400); the message says which parameter and what to send."""


def _number(request: Request, name: str, kind: Callable[[str], float], default=None, low=None, high=None):
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise BadRequest(f"{name}={text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if (low is not None and value < low) or (high is not None and value > high) or value != value:
        raise BadRequest(f"{name}={text!r} is out of range [{low}, {high}]")
    return value


def _video(request: Request) -> str:
    video = request.query_params.get("video")
    if not video:
        raise BadRequest("video= is missing: give a path from /api/videos")
    return video


def create_app(catalog: Catalog, client: Client, probe: Client) -> Starlette:
    """`client` embeds queries; `probe` (short deadline, no waiting) answers health checks."""
    texts = TextCache(client)

    def search(request: Request) -> Response:
        queries = [q for q in request.query_params.getlist("q") if q.strip()]
        try:
            likes = [Like.parse(text) for text in request.query_params.getlist("like")]
        except LikeError as err:
            raise BadRequest(str(err)) from None
        if not queries and not likes:
            raise BadRequest("q= is missing: give the text to search for, or like=VIDEO@SECONDS (both may repeat)")
        top = _number(request, "top", int, 5, 1, MAX_TOP)
        moments = _number(request, "moments", int, 1, 1, MAX_MOMENTS)
        filters = Filters(tuple(request.query_params.getlist("under")), request.query_params.get("glob") or None,
                          _number(request, "min_duration", float, low=0),
                          _number(request, "max_duration", float, low=0))
        snapshot = catalog.current()
        version = client.session_for(snapshot.view.model_version, snapshot.store.where).version  # 503: not served
        try:
            result = search_view(lambda sentences: texts.embed(version, sentences), queries, snapshot.view, top,
                                 filters, moments, likes)
        except LikeError as err:
            raise BadRequest(str(err)) from None
        return JSONResponse(result.as_json())

    def videos(request: Request) -> Response:
        snapshot = catalog.current()
        return JSONResponse({"generation": snapshot.generation, "videos": [
            {"video": e.path, "duration": e.duration, "windows": e.row_count, "model_version": e.model_version}
            for e in snapshot.view.entries.values()]})

    def health(request: Request) -> Response:
        if request.query_params.get("probe") == "live":
            return JSONResponse({"ok": True})
        index: dict = {"folder": str(catalog.folder), "loaded": False}
        server: dict = {"address": probe.options.address, "model": probe.options.model, "reachable": False}
        try:
            snapshot = catalog.current()
            view = snapshot.view
            index.update(folder=str(snapshot.store.where), loaded=True, generation=view.generation, videos=view.videos, windows=view.windows,
                         search=view.kind, stale=view.stale, model_version=view.model_version)
        except (StoreError, OSError, sqlite3.Error) as err:
            index["error"] = str(err)
        try:
            server.update(versions=sorted(v for v, state, _, _ in probe.status() if state == "AVAILABLE"),
                          labels=probe.labels(), reachable=True)
            if index["loaded"]:  # the version the index needs, served (else the sentence that says what is)
                server["version"] = probe.session_for(index["model_version"], index["folder"]).version
        except ServerError as err:  # reachable, but without the version (or refusing): still an answer
            server.update(error=str(err), reachable=err.code is None or err.code.name not in UNREACHABLE)
        ok = index["loaded"] and "version" in server
        body = {"ok": ok, "index": index, "model_server": server}
        if not ok:  # the one line a page or a person reads first
            body["error"] = f"index: {index['error']}" if "error" in index else f"model server: {server['error']}"
        return JSONResponse(body, status_code=200 if ok else 503)

    def media(request: Request) -> Response:
        path = catalog.media(_video(request))
        return FileResponse(path, media_type=mimetypes.guess_type(path)[0] or "application/octet-stream")

    def still(request: Request) -> Response:
        path = catalog.media(_video(request))
        jpeg = jpeg_at(path, _number(request, "t", float, 0.0, low=0), STILL)
        if jpeg is None:
            return JSONResponse({"error": f"{request.query_params['video']!r} gives no frame there"}, 404)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def as_json_error(request: Request, err: Exception) -> Response:
        if isinstance(err, NotServed):
            return JSONResponse({"error": str(err)}, err.status)
        if isinstance(err, BadRequest):
            return JSONResponse({"error": str(err)}, 400)
        if isinstance(err, HTTPException):
            return JSONResponse({"error": f"{request.url.path}: {err.detail}"}, err.status_code)
        if isinstance(err, ServerError):
            return JSONResponse({"error": f"model server: {err}"}, 503)
        if isinstance(err, (StoreError, OSError, sqlite3.Error)):
            return JSONResponse({"error": f"index: {err}"}, 503)
        return JSONResponse({"error": f"internal error ({type(err).__name__}: {err}); see the service's log"}, 500)

    return Starlette(
        routes=[Route("/", page), Route("/api/search", search), Route("/api/videos", videos),
                Route("/api/health", health), Route("/api/media", media), Route("/api/still", still),
                Mount("/static", StaticFiles(directory=STATIC), name="static")],
        exception_handlers={exc: as_json_error for exc in
                            (HTTPException, NotServed, BadRequest, ServerError, StoreError, OSError,
                             sqlite3.Error, Exception)})
