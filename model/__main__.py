"""`python -m model standin OUT [--size tiny|full] [--seed N] [--vocab asset|graph] [--variables ...]`."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from model.config import SIZES
from model.hub_format import VARIABLE_KINDS, VOCAB_LAYOUTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    standin = verbs.add_parser("standin", help="write a stand-in TF1 hub-format S3D MIL-NCE module")
    standin.add_argument("out", type=Path, help="module folder to create (must not exist)")
    standin.add_argument("--size", choices=sorted(SIZES), default="tiny")
    standin.add_argument("--seed", type=int, default=0)
    standin.add_argument("--vocab", choices=VOCAB_LAYOUTS, default="asset",
                         help="vocabulary as an asset file or as a constant in the graph")
    standin.add_argument("--variables", choices=VARIABLE_KINDS, default="resource",
                         help="resource variables or legacy reference variables")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"error: {args.out} already exists; pass a new folder or remove it first", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    from model.standin import write_standin  # imports TensorFlow: only once the arguments are good
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # TF1 API deprecation notices

    start = time.perf_counter()
    path = write_standin(args.out, args.size, args.seed, args.vocab, args.variables)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"wrote {args.size} stand-in module to {path} ({size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
