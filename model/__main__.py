"""`python -m model standin OUT [--size tiny|full] [--seed N] [--vocab asset|graph] [--variables ...]`, and
`python -m model from-torch s3d_howto100m.pth s3d_dict.npy OUT` (the released weights, via the PyTorch port)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from client.files import folder_bytes
from model.config import SIZES, VARIABLE_KINDS, VOCAB_LAYOUTS


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
    torch = verbs.add_parser("from-torch", help="write a hub-format module from the PyTorch port's weights")
    torch.add_argument("checkpoint", type=Path, help="s3d_howto100m.pth")
    torch.add_argument("vocabulary", type=Path, help="s3d_dict.npy")
    torch.add_argument("out", type=Path, help="module folder to create (must not exist)")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"error: {args.out} already exists; pass a new folder or remove it first", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    import tensorflow as tf  # only once the arguments are good

    from model.standin import write_standin

    tf.get_logger().setLevel("ERROR")  # TF1 API deprecation notices

    start = time.perf_counter()
    if args.verb == "standin":
        path = write_standin(args.out, args.size, args.seed, args.vocab, args.variables)
        what = f"{args.size} stand-in module"
    else:
        path = write_ported(args.checkpoint, args.vocabulary, args.out)
        what = "module from the PyTorch weights"
    size = folder_bytes(path)
    print(f"wrote {what} to {path} ({size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)")
    return 0


def write_ported(checkpoint: Path, vocabulary: Path, out: Path) -> Path:
    from model.hub_format import write_module
    from model.torch_weights import convert, read_state_dict, read_vocabulary

    for path in (checkpoint, vocabulary):
        if not path.is_file():
            raise SystemExit(f"error: {path}: no such file")
    return write_module(out, SIZES["full"], convert(read_state_dict(checkpoint)), read_vocabulary(vocabulary))


if __name__ == "__main__":
    sys.exit(main())
