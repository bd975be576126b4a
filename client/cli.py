"""`python -m client` / `s3d-client`: search videos by text against a TF Serving S3D MIL-NCE model.

Exit codes: 0 done; 1 done, but some videos could not be used (each is named); 2 nothing done (bad
arguments, or the server unreachable, not ready or without the model).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from s3d_retrieval.client.api import Client, checked, stderr_note
from s3d_retrieval.client.decode.video import Sampling, load, model_sampling
from s3d_retrieval.client.defaults import (FPS, FRAMES, GRPC_PORT, INDEX_WAIT, LOCK_WAIT, MODEL_NAME,
                                           SENTENCES_PER_REQUEST, SERVER_ENV, SHORT_WAIT, SIZE, TIMEOUT, UI_PORT,
                                           VACUUM_AGE, WINDOWS_PER_REQUEST)
from s3d_retrieval.client.errors import Error
from s3d_retrieval.client.files import atomic_write
from s3d_retrieval.client.library.evaluate import PROTOCOLS
from s3d_retrieval.client.library.like import Like, LikeError
from s3d_retrieval.client.library.promote import GateRefused
from s3d_retrieval.client.library.vectors import EXACT_LIMIT, SCAN
from s3d_retrieval.client.library.walk import Shard
from s3d_retrieval.client.memory import release_big_blocks
from s3d_retrieval.client.milvus.store import COLLECTION, Milvus
from s3d_retrieval.client.outputs import eval_report, html_report
from s3d_retrieval.client.outputs.report import as_table
from s3d_retrieval.client.transport.session import ServerError
from s3d_retrieval.client.transport.tensors import dtype_name


def _sampling_flags(parser: argparse.ArgumentParser) -> None:
    """Window settings default to what the served model was trained with (its `preprocessing` signature),
    else the released model's (32 frames at 10 fps, 224x224)."""
    parser.add_argument("--sampling", choices=("segments", "colab"), default="segments",
                        help="segments: windows at --fps over the whole video; colab: the first --frames frames")
    parser.add_argument("--stride", type=float, help="seconds between window starts (default: one window)")
    parser.add_argument("--frames", type=int, help=f"frames per window (default: the model's, else {FRAMES})")
    parser.add_argument("--fps", type=float, help=f"sampling rate of segments (default: the model's, else {FPS:g})")
    parser.add_argument("--size", type=int, help=f"frame height and width (default: the model's, else {SIZE})")


def _version_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """The model version a verb's requests name: by number, or by a label the server defines."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model-version", type=int, metavar="N", help=f"the model version {what}")
    group.add_argument("--model-label", metavar="LABEL",
                       help="the version a label of the server names (TF Serving's version_labels: stable, canary)")


def _milvus_flags(parser: argparse.ArgumentParser, where: argparse._MutuallyExclusiveGroup) -> None:
    where.add_argument("--milvus", metavar="URI",
                       help="the index in Milvus instead of a folder: a Milvus Lite file ending in .db, or a server's "
                            "http://HOST:19530 (pip install 's3d-retrieval[milvus]')")
    parser.add_argument("--collection", default=COLLECTION, metavar="NAME",
                        help=f"--milvus: the collection (default {COLLECTION})")


def _where(args: argparse.Namespace) -> Path | Milvus:
    """The index a verb works on: a folder (--index) or a Milvus collection (--milvus, --collection)."""
    return Milvus(args.milvus, args.collection) if args.milvus else args.index


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
    p.add_argument("--server", help=f"the model server's gRPC address HOST:PORT (default: ${SERVER_ENV}, else "
                                    f"localhost:{GRPC_PORT})")
    p.add_argument("--model", default=MODEL_NAME, help="served model name")
    p.add_argument("--timeout", type=float, default=TIMEOUT, help="deadline of each call, seconds")
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
    _milvus_flags(search, where)
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
    _version_flags(search, "that embeds --videos and the text (default: the label stable's, else the newest served); "
                           "an index is searched with the version that embedded it")
    frames = verbs.add_parser("frames", help="write the exact uint8 model input of a video as .npy")
    frames.add_argument("video")
    frames.add_argument("--out", type=Path, required=True, help="FILE.npy: [windows, T, H, W, 3] uint8")
    _sampling_flags(frames)
    index = verbs.add_parser("index", help="embed video files (or folders) into a persistent index")
    index.add_argument("paths", nargs="+", metavar="PATH")
    into = index.add_mutually_exclusive_group(required=True)
    into.add_argument("--index", type=Path, metavar="DIR",
                      help="the index folder (made if missing); a name `promote` made: the index it points at")
    _milvus_flags(index, into)
    index.add_argument("--flush-every", type=int, default=16, help="videos committed together")
    index.add_argument("--shard", type=_shard, metavar="I/N",
                       help="index only share I of N (0-based) of the files, by a stable hash of each path relative "
                            "to the PATH it was found under: N machines agree without talking; then `merge`")
    _sampling_flags(index)
    _version_flags(index, "of a new index (default: the label stable's, else the newest served); an existing one "
                          "keeps its own, and refuses another")
    merging = verbs.add_parser("merge", help="combine shard indexes (index --shard) into one index")
    merging.add_argument("shards", nargs="+", type=Path, metavar="SHARD_INDEX")
    merging.add_argument("--index", type=Path, required=True, metavar="DIR", help="the combined index (made or added to)")
    remove = verbs.add_parser("remove", help="remove videos (or everything under folders) from an index")
    remove.add_argument("paths", nargs="+", metavar="PATH")
    out_of = remove.add_mutually_exclusive_group(required=True)
    out_of.add_argument("--index", type=Path, metavar="DIR")
    _milvus_flags(remove, out_of)
    evaluate = verbs.add_parser("eval", help="retrieval quality on a labelled set: R@K, median rank, moments")
    evaluate.add_argument("--csv", type=Path, required=True,
                          help="video_id,sentence (MSR-VTT style) or video_id,start,end,text (YouCook2 style)")
    evaluate.add_argument("--videos", type=Path, required=True, metavar="ROOT",
                          help="folder holding the videos (file stem = video_id)")
    evaluate.add_argument("--protocol", choices=PROTOCOLS, default="max",
                          help="max: best window; mean: --windows windows averaged; colab: the first frames")
    evaluate.add_argument("--windows", type=int, default=10, help="windows averaged by --protocol mean (10)")
    reuse = evaluate.add_mutually_exclusive_group()
    reuse.add_argument("--index", type=Path, metavar="DIR",
                       help="reuse (and add to) this index's embeddings: a re-run sends only text requests")
    _milvus_flags(evaluate, reuse)
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    _sampling_flags(evaluate)
    _version_flags(evaluate, "that embeds (default as for a new index; with --index, the index's)")
    ui = verbs.add_parser("ui", help="a search page and its JSON API over an index (pip install '.[ui]')")
    over = ui.add_mutually_exclusive_group(required=True)
    over.add_argument("--index", type=Path, metavar="DIR", help="an index built with `index`")
    _milvus_flags(ui, over)
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ui.add_argument("--port", type=int, default=UI_PORT, help="HTTP port")
    ui.add_argument("--library", type=Path, action="append", metavar="FOLDER",
                    help="folder whose videos the page may play (repeatable; default: the deepest folder holding "
                         "every indexed video): a video whose real path is elsewhere is refused")
    ui.add_argument("--reload-every", type=float, default=1.0, metavar="SECONDS",
                    help="how often to look for the index's new commits (index, merge, remove)")
    vacuum = verbs.add_parser("vacuum", help="delete what crashed or raced writers left that no video uses")
    of = vacuum.add_mutually_exclusive_group(required=True)
    of.add_argument("--index", type=Path, metavar="DIR",
                    help="an index folder: files of killed writers (only while no writer is at work)")
    _milvus_flags(vacuum, of)
    vacuum.add_argument("--older-than", type=float, metavar="SECONDS",
                        help=f"--milvus: only windows made this long ago or more (default {VACUUM_AGE:g}: a writer "
                             f"in flight may be about to commit younger ones)")
    promote = verbs.add_parser("promote", help="point a name readers follow at an index (blue/green), after an "
                                               "optional eval gate")
    promote.add_argument("name", metavar="NAME", help="the name: a path (a symbolic link made here), or with --milvus "
                                                      "an alias")
    promote.add_argument("target", metavar="TARGET", help="the index to point it at (a folder, or a collection)")
    promote.add_argument("--milvus", metavar="URI", help="NAME and TARGET are collections of this Milvus")
    promote.add_argument("--eval", type=Path, metavar="CSV",
                         help="gate: measure the index NAME points at and TARGET on this labelled set (eval's CSV), "
                              "and refuse (exit 1) unless TARGET's R@1 is at least as high")
    promote.add_argument("--videos", type=Path, metavar="ROOT", help="--eval: the folder holding the set's videos")
    promote.add_argument("--force", action="store_true", help="promote even if the gate finds TARGET worse")
    rollback = verbs.add_parser("rollback", help="point a name back at the index it pointed at before")
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--milvus", metavar="URI", help="NAME is an alias of this Milvus")
    verbs.add_parser("status", help="the model's versions and their states")
    verbs.add_parser("metadata", help="the signatures the server exposes")
    return p


def _transport(args: argparse.Namespace) -> dict:
    """The global flags as the API's keywords (`index` is patient with the server: a long job)."""
    wait = args.wait if args.wait is not None else INDEX_WAIT if args.command == "index" else SHORT_WAIT
    return dict(model=args.model, timeout=args.timeout, wait=wait, tls=args.tls, tls_ca=args.tls_ca,
                windows_per_request=args.windows_per_request, sentences_per_request=args.sentences_per_request,
                concurrency=args.concurrency, float_input=getattr(args, "float", False))


def _client(args: argparse.Namespace) -> Client:
    return Client(args.server, lock_wait=args.lock_wait, log=stderr_note, **_transport(args))


def _sampling(args: argparse.Namespace, client: Client, model_version: int | None = None) -> Sampling:
    """The window flags over the model version's sampling."""
    return client.sampling(mode=args.sampling, frames=args.frames, fps=args.fps, size=args.size, stride=args.stride,
                           model_version=model_version)


def _new_sampling(args: argparse.Namespace, client: Client) -> Sampling | None:
    """The window flags given (over the asked version's sampling), or None: an index keeps its own, a new one
    takes its version's."""
    if args.sampling == "segments" and (args.frames, args.fps, args.size, args.stride) == (None,) * 4:
        return None
    return _sampling(args, client, client.model_version(args.model_version, args.model_label))


def _search(args: argparse.Namespace) -> int:
    checked(args.queries, args.like, args.top, args.moments)  # before asking the server anything
    with _client(args) as client:
        common = dict(top=args.top, moments=args.moments, like=args.like)
        if args.index or args.milvus:
            if (args.model_version, args.model_label) != (None, None):
                raise ValueError("--model-version and --model-label are for --videos: an index is searched with the "
                                 "model version that embedded it")
            result = client.search(args.queries, index=_where(args), under=args.under, glob=args.glob,
                                   min_duration=args.min_duration, max_duration=args.max_duration, kind=args.search,
                                   nprobe=args.nprobe, **common)
        else:
            version = client.model_version(args.model_version, args.model_label)
            result = client.search(args.queries, videos=args.videos, sampling=_sampling(args, client, version),
                                   model_version=version, **common)
    print(json.dumps(result.as_json(), indent=2) if args.json else as_table(result), end="\n" if args.json else "")
    if args.html:
        html_report.write(args.html, html_report.render(result))
        print(f"wrote {args.html}", file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return _report_errors(result.errors)


def _frames(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            sampling = _sampling(args, client)
        except ServerError:
            sampling = model_sampling(None, args.sampling, args.frames, args.fps, args.size, args.stride)
            stderr_note("no model server answered; using the default sampling")
    array, spans = load(args.video, sampling)
    atomic_write(args.out, lambda f: np.save(f, array))
    print(f"wrote {args.out}: {array.shape} uint8, windows " + ", ".join(f"{s:.1f}-{e:.1f} s" for s, e in spans))
    return 0


def _index(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.index(args.paths, index=_where(args), flush_every=args.flush_every, shard=args.shard,
                             sampling=_new_sampling(args, client), on_commit=print, bar=sys.stderr.isatty(),
                             model_version=args.model_version, model_label=args.model_label)
    print(stats.summary())
    return _report_errors(stats.failed, "skipped")


def _merge(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(client.merge(args.shards, index=args.index).summary())
    return 0


def _remove(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(f"removed {client.remove(args.paths, index=_where(args))} video(s) from {args.milvus or args.index}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    errors: list[tuple[str, str]] = []
    with _client(args) as client:
        result = client.evaluate(args.csv, args.videos, protocol=args.protocol, windows=args.windows,
                                 index=_where(args), sampling=_new_sampling(args, client), errors=errors,
                                 model_version=args.model_version, model_label=args.model_label)
    print(json.dumps(result.as_json(), indent=2) if args.json else eval_report.as_table(result),
          end="\n" if args.json else "")
    if args.html:
        html_report.write(args.html, eval_report.render(result))
        print(f"wrote {args.html}", file=sys.stderr)
    return _report_errors(errors)


def _ui(args: argparse.Namespace) -> int:
    try:
        from s3d_retrieval.client.ui.server import serve
    except ImportError as err:
        raise ValueError(f"the ui verb needs the [ui] extra ({err}): pip install 's3d-retrieval[ui]' "
                         f"(or '.[ui]' in a checkout)") from None
    return serve(_where(args), args.server, _transport(args), args.host, args.port, args.library, args.reload_every)


def _names(args: argparse.Namespace, *names: str) -> list[Path | Milvus]:
    """NAME (and TARGET) as locations: paths, or with --milvus collections."""
    return [Milvus(args.milvus, n) if args.milvus else Path(n) for n in names]


def _promote(args: argparse.Namespace) -> int:
    name, target = _names(args, args.name, args.target)
    with _client(args) as client:
        try:
            done = client.promote(name, target, eval_csv=args.eval, videos=args.videos, force=args.force)
        except GateRefused as refused:
            print("\n".join(refused.figures))
            print(f"error: {refused}", file=sys.stderr)
            return 1
    print("\n".join([*done.figures, done.summary()]))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    [name] = _names(args, args.name)
    with _client(args) as client:
        print(client.rollback(name).summary())
    return 0


def _vacuum(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(client.vacuum(index=_where(args), older_than=args.older_than))
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for version, state, code, message in client.status():
            print(f"version {version}: {state}" + (f" (error {code}: {message})" if code else ""))
        for label, version in client.labels().items():
            print(f"label {label}: version {version}")
    return 0


def _metadata(args: argparse.Namespace) -> int:
    with _client(args) as client:
        version, signatures = client.metadata()
    print(f"model {args.model} version {version}")
    for name, sig in sorted(signatures.signature_def.items()):
        print(f"  {name}: {_specs(sig.inputs)} -> {_specs(sig.outputs)}")
    return 0


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "search": _search, "frames": _frames, "index": _index, "merge": _merge, "remove": _remove, "eval": _eval,
    "ui": _ui, "vacuum": _vacuum, "promote": _promote, "rollback": _rollback, "status": _status,
    "metadata": _metadata}


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
        return VERBS[args.command](args)
    except (Error, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
