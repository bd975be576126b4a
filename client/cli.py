"""`python -m client` / `s3d-client`: search videos by text against a TF Serving S3D MIL-NCE model.

Exit codes: 0 done; 1 done, but some videos could not be used (each is named); 2 nothing done (bad
arguments, or the server unreachable, not ready or without the model).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from s3d_retrieval.client.defaults import (FPS, FRAMES, GRPC_PORT, LOCK_WAIT, MODEL_NAME, SENTENCES_PER_REQUEST, SIZE, UI_PORT,
                             WINDOWS_PER_REQUEST)
from s3d_retrieval.client.outputs import eval_report
from s3d_retrieval.client.outputs import html_report
from s3d_retrieval.client.library.evalset import EvalSetError, load_evalset
from s3d_retrieval.client.library.evaluate import PROTOCOLS, evaluate
from s3d_retrieval.client.files import atomic_write
from s3d_retrieval.client.memory import release_big_blocks
from s3d_retrieval.client.library.index import Index, IndexFolderError, IndexWriteError
from s3d_retrieval.client.library.lock import LockTimeout
from s3d_retrieval.client.library.indexing import index_videos
from s3d_retrieval.client.outputs.report import as_json, as_table
from s3d_retrieval.client.library.merge import merge
from s3d_retrieval.client.library.like import Like, LikeError
from s3d_retrieval.client.library.search import Filters, search, search_index
from s3d_retrieval.client.library.vectors import EXACT_LIMIT, SCAN
from s3d_retrieval.client.library.walk import Shard
from s3d_retrieval.client.transport.session import Options, ServerError, Session
from s3d_retrieval.client.transport.tensors import dtype_name
from s3d_retrieval.client.decode.video import Sampling, VideoError, load, model_sampling

INDEX_WAIT = 300.0  # seconds an index run rides out an unavailable server (a restart, a rolling update)
SHORT_WAIT = 10.0  # the other verbs answer a person: fail soon


def _sampling_flags(parser: argparse.ArgumentParser) -> None:
    """Window settings default to what the served model was trained with (its `preprocessing` signature),
    else the released model's (32 frames at 10 fps, 224x224)."""
    parser.add_argument("--sampling", choices=("segments", "colab"), default="segments",
                        help="segments: windows at --fps over the whole video; colab: the first --frames frames")
    parser.add_argument("--stride", type=float, help="seconds between window starts (default: one window)")
    parser.add_argument("--frames", type=int, help=f"frames per window (default: the model's, else {FRAMES})")
    parser.add_argument("--fps", type=float, help=f"sampling rate of segments (default: the model's, else {FPS:g})")
    parser.add_argument("--size", type=int, help=f"frame height and width (default: the model's, else {SIZE})")


def _like(text: str) -> Like:
    try:
        return Like.parse(text)
    except LikeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"--shard {text!r}: ")) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s3d-client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default=f"localhost:{GRPC_PORT}", help="gRPC address HOST:PORT")
    p.add_argument("--model", default=MODEL_NAME, help="served model name")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of each call, seconds")
    p.add_argument("--wait", type=float, metavar="SECONDS",
                   help=f"how long to keep retrying while the server is unavailable (restarting, rolling); "
                        f"default {INDEX_WAIT:g} for index, {SHORT_WAIT:g} otherwise")
    p.add_argument("--lock-wait", type=float, default=LOCK_WAIT, metavar="SECONDS",
                   help=f"how long a writer of an index (index, merge, remove, eval --index) waits while another "
                        f"writer changes it (default {LOCK_WAIT:g})")
    p.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    p.add_argument("--tls-ca", type=Path, help="TLS with these PEM root certificates")
    p.add_argument("--windows-per-request", type=int, default=WINDOWS_PER_REQUEST,
                   help="video windows sent in one request (at most the server's max_batch_size)")
    p.add_argument("--sentences-per-request", type=int, default=SENTENCES_PER_REQUEST,
                   help="sentences sent in one request (at most the server's max_batch_size)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    verbs = p.add_subparsers(dest="command", required=True)
    search = verbs.add_parser("search", help="rank videos (files, or an index) for text queries or moments")
    search.add_argument("queries", nargs="*", metavar="QUERY", help="text to search for (optional with --like)")
    search.add_argument("--like", action="append", default=[], type=_like, metavar="VIDEO@SECONDS",
                        help="search with a moment of a video instead of text (VIDEO@SECONDS or VIDEO@START-END; "
                             "repeatable): the moments that look like it, the moment itself left out")
    where = search.add_mutually_exclusive_group(required=True)
    where.add_argument("--videos", nargs="+", metavar="FILE", help="video files to decode and rank now")
    where.add_argument("--index", type=Path, metavar="DIR", help="an index built with `index`")
    search.add_argument("--top", type=int, default=5, help="videos per query")
    search.add_argument("--moments", type=int, default=1, metavar="K",
                        help="moments per video, best first, never overlapping (default 1)")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained HTML report")
    search.add_argument("--float", action="store_true", help="send float32 frames (4x bigger) instead of uint8")
    search.add_argument("--under", action="append", default=[], metavar="FOLDER",
                        help="--index: only videos under this folder (repeatable)")
    search.add_argument("--glob", metavar="PATTERN", help="--index: only videos whose path matches (fnmatch)")
    search.add_argument("--min-duration", type=float, metavar="SEC", help="--index: only videos this long or longer")
    search.add_argument("--max-duration", type=float, metavar="SEC", help="--index: only videos this long or shorter")
    search.add_argument("--search", choices=("exact", "ivf"),
                        help=f"--index: exact scan, or faiss IVF-SQ8 re-scored exactly (default: exact up to "
                             f"{EXACT_LIMIT:,} windows)")
    search.add_argument("--nprobe", type=int,
                        help=f"--search ivf: inverted lists searched (default: those holding ~{SCAN:,} windows)")
    _sampling_flags(search)
    frames = verbs.add_parser("frames", help="write the exact uint8 model input of a video as .npy")
    frames.add_argument("video")
    frames.add_argument("--out", type=Path, required=True, help="FILE.npy: [windows, T, H, W, 3] uint8")
    _sampling_flags(frames)
    index = verbs.add_parser("index", help="embed video files (or folders) into a persistent index")
    index.add_argument("paths", nargs="+", metavar="PATH")
    index.add_argument("--index", type=Path, required=True, metavar="DIR")
    index.add_argument("--flush-every", type=int, default=16, help="videos committed together")
    index.add_argument("--shard", type=_shard, metavar="I/N",
                       help="index only share I of N (0-based) of the files, by a stable hash of each path relative "
                            "to the PATH it was found under: N machines agree without talking; then `merge`")
    _sampling_flags(index)
    merging = verbs.add_parser("merge", help="combine shard indexes (index --shard) into one index")
    merging.add_argument("shards", nargs="+", type=Path, metavar="SHARD_INDEX")
    merging.add_argument("--index", type=Path, required=True, metavar="DIR", help="the combined index (made or added to)")
    remove = verbs.add_parser("remove", help="remove videos (or everything under folders) from an index")
    remove.add_argument("paths", nargs="+", metavar="PATH")
    remove.add_argument("--index", type=Path, required=True, metavar="DIR")
    evaluate = verbs.add_parser("eval", help="retrieval quality on a labelled set: R@K, median rank, moments")
    evaluate.add_argument("--csv", type=Path, required=True,
                          help="video_id,sentence (MSR-VTT style) or video_id,start,end,text (YouCook2 style)")
    evaluate.add_argument("--videos", type=Path, required=True, metavar="ROOT",
                          help="folder holding the videos (file stem = video_id)")
    evaluate.add_argument("--protocol", choices=PROTOCOLS, default="max",
                          help="max: best window; mean: --windows windows averaged; colab: the first frames")
    evaluate.add_argument("--windows", type=int, default=10, help="windows averaged by --protocol mean (10)")
    evaluate.add_argument("--index", type=Path, metavar="DIR",
                          help="reuse (and add to) this index's embeddings: a re-run sends only text requests")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    _sampling_flags(evaluate)
    ui = verbs.add_parser("ui", help="a search page and its JSON API over an index (pip install '.[ui]')")
    ui.add_argument("--index", type=Path, required=True, metavar="DIR", help="an index built with `index`")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ui.add_argument("--port", type=int, default=UI_PORT, help="HTTP port")
    ui.add_argument("--library", type=Path, action="append", metavar="FOLDER",
                    help="folder whose videos the page may play (repeatable; default: the deepest folder holding "
                         "every indexed video): a video whose real path is elsewhere is refused")
    ui.add_argument("--reload-every", type=float, default=1.0, metavar="SECONDS",
                    help="how often to look for the index's new commits (index, merge, remove)")
    verbs.add_parser("status", help="the model's versions and their states")
    verbs.add_parser("metadata", help="the signatures the server exposes")
    return p


def _options(args: argparse.Namespace) -> Options:
    wait = args.wait if args.wait is not None else INDEX_WAIT if args.command == "index" else SHORT_WAIT
    return Options(address=args.server, model=args.model, timeout=args.timeout, wait=wait,
                   log=_note,
                   tls=args.tls, tls_ca=args.tls_ca, windows_per_request=args.windows_per_request,
                   sentences_per_request=args.sentences_per_request,
                   concurrency=args.concurrency, float_input=getattr(args, "float", False))


def resolve_sampling(args: argparse.Namespace, served: dict[str, float] | None) -> Sampling:
    return model_sampling(served, args.sampling, args.frames, args.fps, args.size, args.stride)


def _note(line: str) -> None:
    print(f"note: {line}", file=sys.stderr)


def _writer(args: argparse.Namespace, folder: Path, sampling: Sampling | None = None, create: bool = False) -> Index:
    """The index opened for writing: changes wait up to --lock-wait for another writer, saying so once."""
    return Index(folder, args.model, sampling, create=create, lock_wait=args.lock_wait, log=_note)


def run(args: argparse.Namespace) -> int:
    if args.command == "search":
        _check_search(args)
    if args.command == "remove":
        with _writer(args, args.index) as index:
            print(f"removed {index.remove(args.paths)} video(s) from {args.index}")
            index.refresh_search()
        return 0
    if args.command == "ui":
        try:
            from s3d_retrieval.client.ui.server import serve
        except ImportError as err:
            raise ValueError(f"the ui verb needs the [ui] extra ({err}): pip install 's3d-retrieval[ui]' "
                             f"(or '.[ui]' in a checkout)") from None
        return serve(args.index, _options(args), args.host, args.port, args.library, args.reload_every)
    if args.command == "merge":
        print(merge(args.shards, args.index, args.model, args.lock_wait, _note).summary())
        with _writer(args, args.index) as index:
            index.refresh_search()
        return 0
    with Session(_options(args)) as session:
        if args.command == "frames":
            try:
                served = session.preprocessing()
            except ServerError:
                served = None
                print("note: no model server answered; using the default sampling", file=sys.stderr)
            array, spans = load(args.video, resolve_sampling(args, served))
            atomic_write(args.out, lambda f: np.save(f, array))
            print(f"wrote {args.out}: {array.shape} uint8, windows "
                  + ", ".join(f"{s:.1f}-{e:.1f} s" for s, e in spans))
            return 0
        uses_index_sampling = args.command == "search" and args.index  # the index keeps its own
        sampling = (resolve_sampling(args, session.preprocessing())
                    if hasattr(args, "sampling") and not uses_index_sampling else None)
        if args.command == "status":
            for version, state, code, message in session.status():
                print(f"version {version}: {state}" + (f" (error {code}: {message})" if code else ""))
            return 0
        if args.command == "metadata":
            version, signatures = session.metadata()
            print(f"model {args.model} version {version}")
            for name, sig in sorted(signatures.signature_def.items()):
                print(f"  {name}: {_specs(sig.inputs)} -> {_specs(sig.outputs)}")
            return 0
        if args.command == "eval":
            return run_eval(args, session, sampling)
        if args.command == "index":
            session.ensure_ready()  # before creating anything
            with _writer(args, args.index, sampling, create=True) as index:
                stats = index_videos(session, index, args.paths, args.flush_every, log=print, shard=args.shard)
                index.refresh_search()
            print(stats.summary())
            return _report_errors(stats.failed, "skipped")
        if args.index:
            with Index(args.index, args.model, read_only=True) as index:
                filters = Filters(tuple(args.under), args.glob, args.min_duration, args.max_duration)
                result = search_index(session, args.queries, index, args.top, filters, args.search, args.nprobe,
                                      args.moments, args.like)
        else:
            session.ensure_ready()
            result = search(session, args.queries, args.videos, sampling, args.top, args.moments, args.like)
    print(json.dumps(as_json(result), indent=2) if args.json else as_table(result), end="\n" if args.json else "")
    if args.html:
        html_report.write(args.html, html_report.render(result))
        print(f"wrote {args.html}", file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return _report_errors(result.errors)


def _check_search(args: argparse.Namespace) -> None:
    if not args.queries and not args.like:
        raise ValueError("search needs a QUERY (text) or --like VIDEO@SECONDS")
    if args.top < 1 or args.moments < 1:
        raise ValueError("--top and --moments must be at least 1")


def run_eval(args: argparse.Namespace, session: Session, sampling: Sampling) -> int:
    if args.windows < 1:
        raise ValueError("--windows must be at least 1")
    evalset = load_evalset(args.csv, args.videos)
    session.ensure_ready()
    errors: list[tuple[str, str]] = []
    if args.index:
        with _writer(args, args.index, sampling if not (args.index / "index.sqlite").is_file() else None,
                     create=True) as index:
            result = evaluate(session, evalset, args.protocol, args.windows, index=index, errors=errors)
            index.refresh_search()  # a writer that added videos brings the search structure up to them
    else:
        result = evaluate(session, evalset, args.protocol, args.windows, sampling, errors=errors)
    result.excluded += [Path(v).stem for v, _ in errors]
    print(json.dumps(result.as_json(), indent=2) if args.json else eval_report.as_table(result), end="\n" if args.json else "")
    if args.html:
        html_report.write(args.html, eval_report.render(result))
        print(f"wrote {args.html}", file=sys.stderr)
    return _report_errors(errors)


def _report_errors(errors: list[tuple[str, str]], label: str = "error") -> int:
    for video, why in errors:
        print(f"{label}: {video}: {why}", file=sys.stderr)
    return 1 if errors else 0


def _specs(infos) -> str:
    """`key dtype[shape]` of each TensorInfo."""
    return ", ".join(f"{k} {dtype_name(v.dtype)}[{','.join(str(d.size) for d in v.tensor_shape.dim)}]"
                     for k, v in sorted(infos.items()))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    release_big_blocks()
    try:
        return run(args)
    except (ServerError, VideoError, IndexFolderError, IndexWriteError, LockTimeout, EvalSetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
