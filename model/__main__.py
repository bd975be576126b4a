"""The network's verbs:

  python -m model standin OUT [--size tiny|full] [--seed N] [--vocab asset|graph] [--variables ...]
  python -m model from-torch s3d_howto100m.pth s3d_dict.npy OUT     (the released weights, via the PyTorch port)
  python -m model corpus OUT [--videos N] [--seed S] [--heldout N]    (a narrated demo world)
  python -m model train --data DIR --out MODULE_DIR [--size tiny|full] [--steps N] ...   (MIL-NCE training)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from s3d_retrieval.client.files import folder_bytes
from s3d_retrieval.model.config import SIZES, VARIABLE_KINDS, VOCAB_LAYOUTS
from s3d_retrieval.model.corpus import ALL_EVENTS, HELDOUT, TRAIN_VIDEOS
from s3d_retrieval.model.quiet import add_verbose_flag, quiet_tensorflow


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
    corpus = verbs.add_parser("corpus", help="generate a narrated demo world (videos + subtitles + held-out split)")
    corpus.add_argument("out", type=Path, help="folder to create (must not exist)")
    corpus.add_argument("--videos", type=int, default=TRAIN_VIDEOS, help=f"training videos ({TRAIN_VIDEOS})")
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--heldout", type=int, default=HELDOUT,
                        help=f"held-out clips, one query each ({HELDOUT}; at most {len(ALL_EVENTS) - 10})")
    add_train_parser(verbs)
    for verb in verbs.choices.values():
        add_verbose_flag(verb)
    args = parser.parse_args(argv)
    if args.verb == "corpus":
        return write_demo_corpus(args.out, args.videos, args.seed, args.heldout)
    if args.verb == "train":
        return run_training(args)
    if args.out.exists():
        print(f"error: {args.out} already exists; pass a new folder or remove it first", file=sys.stderr)
        return 2
    quiet_tensorflow(argv)
    from s3d_retrieval.model.standin import write_standin  # imports TensorFlow: only once the arguments are good

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


def add_train_parser(verbs) -> None:
    train = verbs.add_parser("train", help="train (or fine-tune) with MIL-NCE on narrated videos",
                             description="Train S3D MIL-NCE on narrated videos and write a hub-format module.")
    train.add_argument("--data", type=Path, required=True,
                       help="a folder of videos with same-stem .srt/.vtt, a folder with captions/*.csv, "
                            "or a CSV video,start,end,text")
    train.add_argument("--out", type=Path, required=True, help="module folder to create (must not exist)")
    train.add_argument("--size", choices=sorted(SIZES), default="tiny")
    train.add_argument("--steps", type=int, default=3000)
    train.add_argument("--batch", type=int, default=16,
                       help="clips per step across all replicas and workers; every other clip's narrations are "
                            "a clip's negatives")
    train.add_argument("--frames", type=int, help="frames per clip (tiny 16, full 32)")
    train.add_argument("--image-size", type=int, help="clip height and width (tiny 64, full 224)")
    train.add_argument("--fps", type=float, help="sampling rate of clips (10)")
    train.add_argument("--candidates", type=int, default=2,
                       help="K: a clip's bag of positives is its narration and the K-1 nearest in time")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, reached after a 5%% warm-up")
    train.add_argument("--lr-decay", choices=("none", "cosine"), default="none",
                       help="after the warm-up: hold --lr (fastest in short runs), or decay it along a cosine to a "
                            "tenth at the last step (long runs)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--init", help="fine-tune from this module (its vocabulary and word vectors are kept)")
    train.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    train.add_argument("--heldout", type=Path, help="video_id,sentence CSV (videos beside it) for held-out figures")
    train.add_argument("--readers", type=int, help="threads decoding clips as they are drawn (one per core)")
    train.add_argument("--cache-mb", type=int, default=0,
                       help="keep up to this many MB of decoded videos in memory (small corpora: a video drawn "
                            "again is not decoded again; the same clips); 0: off")
    train.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                       help="compute type of the video tower (bfloat16: mixed precision for GPUs and TPUs)")
    train.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                       help="deterministic ops, so a resumed run retraces the uninterrupted one (GPUs run faster "
                            "without)")


def run_training(args) -> int:
    from s3d_retrieval.client.decode.video import Sampling
    from s3d_retrieval.model.clips import DEFAULT_SAMPLING, ClipSampling

    counts = (args.steps, args.batch, args.candidates, args.checkpoint_every, 1 if args.readers is None else args.readers)
    if min(counts) < 1 or args.lr <= 0 or args.cache_mb < 0:
        print("error: --steps, --batch, --candidates, --checkpoint-every and --readers must be >= 1, --lr > 0 and "
              "--cache-mb >= 0", file=sys.stderr)
        return 2
    if args.batch < 2:
        print("error: --batch must be at least 2: the other clips of a batch are the negatives", file=sys.stderr)
        return 2
    if args.heldout and not args.heldout.is_file():
        print(f"error: --heldout {args.heldout}: no such file", file=sys.stderr)
        return 2
    base = DEFAULT_SAMPLING[args.size]
    quiet_tensorflow()
    import tensorflow as tf

    from s3d_retrieval.model.hub_format import ModuleError, read_manifest
    from s3d_retrieval.model.narration import DataError
    from s3d_retrieval.model.train import Settings, train

    try:
        if args.init:  # a fine-tune keeps the sampling its module was trained with, unless told otherwise
            base = ClipSampling(**read_manifest(Path(args.init)).get("sampling", dataclasses.asdict(base)))
        sampling = ClipSampling(args.frames or base.frames, args.fps or base.fps, args.image_size or base.size)
        try:  # the client's limits for a window are the network's
            Sampling(frames=sampling.frames, fps=sampling.fps, size=sampling.size)
        except ValueError as err:
            raise DataError(f"--frames/--fps/--image-size: {err}") from None
        settings = Settings(str(args.data.resolve()), args.size, args.steps, args.batch, sampling, args.candidates,
                            args.lr, args.seed, str(Path(args.init).resolve()) if args.init else None,
                            str(args.heldout.resolve()) if args.heldout else None, args.precision, args.lr_decay)
        if args.deterministic:  # this process is ours: the library leaves global state to its caller
            tf.config.experimental.enable_op_determinism()
        start = time.perf_counter()
        out = train(settings, args.out, args.checkpoint_every, readers=args.readers, cache_mb=args.cache_mb)
    except (DataError, ModuleError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if out is None:  # a worker other than the chief: the chief writes the module
        print(f"worker done; the chief writes {args.out}")
        return 0
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"wrote {out} ({folder_bytes(out) / 1e6:.1f} MB, {time.perf_counter() - start:.0f} s): "
          f"loss {manifest['first_loss']:.3f} -> {manifest['final_loss']:.3f}")
    if held := manifest["heldout"]:
        print(f"held-out text->video R@1 {held['R@1']:.2f}, R@5 {held['R@5']:.2f}, median rank {held['MdR']:g} "
              f"(chance {held['chance_R@1']:.3f}) over {held['queries']} queries")
    return 0


def write_demo_corpus(out: Path, videos: int, seed: int, heldout: int = HELDOUT) -> int:
    from s3d_retrieval.model.corpus import write_corpus

    if out.exists():
        print(f"error: {out} already exists; pass a new folder or remove it first", file=sys.stderr)
        return 2
    if videos < 2:
        print("error: --videos must be at least 2", file=sys.stderr)
        return 2
    if not 1 <= heldout <= len(ALL_EVENTS) - 10:  # the held-out clips and the story's 10 events are all different
        print(f"error: --heldout must be 1 to {len(ALL_EVENTS) - 10}", file=sys.stderr)
        return 2
    summary = write_corpus(out, videos=videos, heldout=heldout, seed=seed)
    print(f"wrote {out}: {videos} narrated videos in train/, {summary['heldout']} held-out clips with "
          f"queries in heldout/, a {summary['story_seconds']:.0f} s story video with {summary['story_events']} "
          f"events in story/")
    return 0


def write_ported(checkpoint: Path, vocabulary: Path, out: Path) -> Path:
    from s3d_retrieval.model.hub_format import write_module
    from s3d_retrieval.model.torch_weights import convert, read_state_dict, read_vocabulary

    for path in (checkpoint, vocabulary):
        if not path.is_file():
            raise SystemExit(f"error: {path}: no such file")
    return write_module(out, SIZES["full"], convert(read_state_dict(checkpoint)), read_vocabulary(vocabulary))


if __name__ == "__main__":
    sys.exit(main())
