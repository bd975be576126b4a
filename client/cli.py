"""`python -m client` / `s3d-client`: search videos by text against a TF Serving S3D MIL-NCE model.

Exit codes: 0 done; 1 done, but some videos could not be used (each is named); 2 nothing done (bad
arguments, or the server unreachable, not ready or without the model).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from client.defaults import FPS, FRAMES, GRPC_PORT, MODEL_NAME
from client.report import as_json, as_table
from client.search import search
from client.session import Options, ServerError, Session
from client.tensors import dtype_name
from client.video import Sampling, VideoError, load


def _sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sampling", choices=("segments", "colab"), default="segments",
                        help="segments: 3.2 s windows at 10 fps over the whole video; colab: the first 32 frames")
    parser.add_argument("--stride", type=float, default=FRAMES / FPS, help="seconds between window starts")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s3d-client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default=f"localhost:{GRPC_PORT}", help="gRPC address HOST:PORT")
    p.add_argument("--model", default=MODEL_NAME, help="served model name")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline of each call, seconds")
    p.add_argument("--retries", type=int, default=4, help="retries when the server is UNAVAILABLE")
    p.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    p.add_argument("--tls-ca", type=Path, help="TLS with these PEM root certificates")
    p.add_argument("--windows-per-request", type=int, default=4, help="video windows sent in one request")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    verbs = p.add_subparsers(dest="command", required=True)
    search = verbs.add_parser("search", help="rank videos for text queries")
    search.add_argument("queries", nargs="+", metavar="QUERY")
    search.add_argument("--videos", nargs="+", required=True, metavar="FILE")
    search.add_argument("--top", type=int, default=5, help="matches per query")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--float", action="store_true", help="send float32 frames (4x bigger) instead of uint8")
    _sampling_flags(search)
    frames = verbs.add_parser("frames", help="write the exact uint8 model input of a video as .npy")
    frames.add_argument("video")
    frames.add_argument("--out", type=Path, required=True, help="FILE.npy: [windows, T, H, W, 3] uint8")
    _sampling_flags(frames)
    verbs.add_parser("status", help="the model's versions and their states")
    verbs.add_parser("metadata", help="the signatures the server exposes")
    return p


def _options(args: argparse.Namespace) -> Options:
    return Options(address=args.server, model=args.model, timeout=args.timeout, retries=args.retries,
                   tls=args.tls, tls_ca=args.tls_ca, windows_per_request=args.windows_per_request,
                   concurrency=args.concurrency, float_input=getattr(args, "float", False))


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write through a temporary file in the same folder, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    sampling = Sampling(mode=args.sampling, stride=args.stride) if hasattr(args, "sampling") else None
    if args.command == "frames":
        array, spans = load(args.video, sampling)
        write_npy(args.out, array)
        print(f"wrote {args.out}: {array.shape} uint8, windows " + ", ".join(f"{s:.1f}-{e:.1f} s" for s, e in spans))
        return 0
    with Session(_options(args)) as session:
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
        session.ensure_ready()
        result = search(session, args.queries, args.videos, sampling, args.top)
    print(json.dumps(as_json(result), indent=2) if args.json else as_table(result), end="\n" if args.json else "")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for video, why in result.errors:
        print(f"error: {video}: {why}", file=sys.stderr)
    return 1 if result.errors else 0


def _specs(infos) -> str:
    """`key dtype[shape]` of each TensorInfo."""
    return ", ".join(f"{k} {dtype_name(v.dtype)}[{','.join(str(d.size) for d in v.tensor_shape.dim)}]"
                     for k, v in sorted(infos.items()))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except (ServerError, VideoError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
