"""`python -m export [--source HANDLE_OR_DIR] [--model-dir DIR] [--version N]`: publish a TF Serving version.

The source defaults to the official TF Hub handle; offline, point TFHUB_CACHE_DIR at a filled cache or pass
--source with an unpacked module folder. Nothing is published unless the export matches the source.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s3d_retrieval.client.defaults import FRAMES, HUB_HANDLE, MODEL_NAME, SIZE
from s3d_retrieval.model.quiet import add_verbose_flag, quiet_tensorflow


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=HUB_HANDLE, help=f"hub handle or module folder (default {HUB_HANDLE})")
    parser.add_argument("--model-name", default=MODEL_NAME, help=f"served model name (default {MODEL_NAME})")
    parser.add_argument("--model-dir", type=Path, help="base path holding the versions (default models/NAME)")
    parser.add_argument("--version", type=int, help="version number (default: the next one)")
    parser.add_argument("--warmup-frames", type=int,
                        help=f"frames per warmup clip (default: what the module was trained with, else {FRAMES})")
    parser.add_argument("--warmup-size", type=int,
                        help=f"warmup clip height and width (default: the module's training size, else {SIZE})")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    args.model_dir = args.model_dir or Path("models") / args.model_name
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    quiet_tensorflow(argv)
    from s3d_retrieval.export.pipeline import export_model  # imports TensorFlow: only once the arguments are good
    from s3d_retrieval.export.source import ExportError

    try:
        result = export_model(args.source, args.model_dir, args.version, args.model_name,
                              args.warmup_frames, args.warmup_size)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.source} -> {result.path} ({result.megabytes:.1f} MB, {result.seconds:.1f} s)")
    print(f"  {'signature':16} {'inputs':34} outputs")
    for name, spec in result.signatures.items():
        inputs = ", ".join(f"{k} {v}" for k, v in spec["inputs"].items())
        print(f"  {name:16} {inputs:34} {', '.join(f'{k} {v}' for k, v in spec['outputs'].items())}")
    print("  parity, max abs diff vs source: " + ", ".join(f"{k} {v:.1e}" for k, v in result.parity.items()))
    print(f"  preprocessing reported to clients: {result.preprocessing}")
    print(f"  warmup: {result.warmup_records} records replayed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
