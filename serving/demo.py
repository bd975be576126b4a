"""`make demo`: the whole pipeline offline, with rankings whose answers are known.

The demo model (`model/demo/s3d-demo-tiny`, made by `make demo-model`) is the tiny network trained with MIL-NCE
on the narrated demo corpus (`python -m model corpus`). This script exports it if needed, starts the embedded
server, writes the corpus's held-out clips and story video (never seen in training), indexes them with the
sampling the served model reports, and then
- ranks the held-out clips for their queries: the `held-out text->video R@1` line, against chance;
- searches the story video for its events: the moment each query lands on, against the known one (IoU), beside
  the best window alone;
both measured by the library's `evaluate`, the code of the `eval` verb;
- prints a table of a few queries and writes an HTML report.
`--seeds 0 1 2 ...` measures the same on the held-out clips and stories of several corpus seeds instead (`make
moments`), one line per seed and their mean.
It is a small world (four colours, three shapes, four motions, four places), not general video.
"""
from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from s3d_retrieval.client.outputs import html_report
from s3d_retrieval.client.defaults import MODEL_NAME, UI_PORT
from s3d_retrieval.client.library.evalset import load_evalset, read_sentences
from s3d_retrieval.client.library.evaluate import Evaluation, evaluate
from s3d_retrieval.client.library.index import Index
from s3d_retrieval.client.library.indexing import index_videos
from s3d_retrieval.client.library.metrics import IOU_AT, iou
from s3d_retrieval.client.library.rank import rank
from s3d_retrieval.client.outputs.report import as_table
from s3d_retrieval.client.library.search import Result, search_index
from s3d_retrieval.client.transport.session import Options, Pinned, Session
from s3d_retrieval.client.decode.video import model_sampling
from s3d_retrieval.model.quiet import add_verbose_flag, verbose

SHOWN = 4  # held-out queries shown in the table and the report


def start_server(model_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "s3d_retrieval.serving", "--embedded", "--model-dir", str(model_dir),
                             "--host", "127.0.0.1", "--port", "0", "--rest-port", "0"],
                            stdout=subprocess.PIPE, stderr=None if verbose() else subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None  # stdout=PIPE
    line = proc.stdout.readline()
    if "gRPC " not in line:
        proc.kill()
        raise SystemExit(f"error: the embedded server did not start on {model_dir}; run `make serve` to see why")
    return proc, line.split("gRPC ")[1].split(";")[0].split(",")[0].strip()


@dataclass
class Demo:
    """What the demo measured: the held-out clips' retrieval and the story's moments, both by `eval`'s code."""

    heldout: Evaluation  # text->video over the held-out clips, each scoring as its best window
    story: Evaluation  # each event's sentence searched inside the story video: moment metrics
    shown: Result  # a few held-out queries against the whole index, for the table and the report
    moments: Result  # each event's best moment in the story video
    events: list[tuple[str, float, float]]  # (sentence, start, end) of each narrated event
    pairs: list[tuple[str, str]]  # (video, sentence) of the held-out clips
    indexed: str  # the index run's summary

    @property
    def spans(self) -> tuple[dict[str, float], dict[str, float]]:
        """The story's moment figures and its best window's (always measured: its events have spans)."""
        assert self.story.moments is not None and self.story.best_window is not None
        return self.story.moments, self.story.best_window


def run(model_dir: Path, out: Path, seed: int = 0) -> Demo:
    """Serve `model_dir` on the embedded server, index the held-out clips and story of the corpus of `seed` under
    `out`, and measure them with the library's `evaluate` (the `eval` verb's code)."""
    world = out / "corpus"
    if not world.exists():
        from s3d_retrieval.model.corpus import write_corpus

        write_corpus(world, videos=0, seed=seed)  # the held-out clips and the story: the demo model never saw them
    heldout_csv, story_csv = world / "heldout" / "queries.csv", world / "story" / "story.csv"
    pairs, _ = read_sentences(heldout_csv, heldout_csv.parent)
    with open(story_csv, newline="") as f:
        events = [(row["text"], float(row["start"]), float(row["end"])) for row in csv.DictReader(f)]
    story = (world / "story" / "story.webm").resolve()
    server, address = start_server(model_dir)
    try:
        with Session(Options(address=address)) as served:
            session = Pinned(served, served.default_version())
            sampling = model_sampling(session.preprocessing())
            sampling = replace(sampling, stride=sampling.stride / 2)  # half-window steps: finer moments
            with Index(out / "index", MODEL_NAME, sampling, create=True) as index:
                stats = index_videos(session, index, [world / "heldout", world / "story"])
                index.refresh_search()  # as `index` does when it finishes: the page (`make ui`) reads it
                heldout = evaluate(session, load_evalset(heldout_csv, heldout_csv.parent), index=index)
                moments = evaluate(session, load_evalset(story_csv, story_csv.parent), index=index)
                shown = search_index(session, [s for _, s in pairs[:SHOWN]], index, index.view(), top=3)
                windows = index.windows([str(story)])
            queries = [text for text, _, _ in events]
            best = Result(queries, rank(session.embed_text(queries), windows, 1))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    return Demo(heldout, moments, shown, best, events, pairs, stats.summary())  # `moments`: the story's evaluation


def figures(demo: Demo) -> str:
    """The demo's measured line: held-out retrieval, and the story's moments beside the best window alone."""
    t2v, (moments, window) = demo.heldout.text_to_video, demo.spans
    spans = lambda f: "/".join(f"{f[f'R@1,IoU>={t}']:.2f}" for t in IOU_AT) + f", mIoU {f['mIoU']:.2f}"  # noqa: E731
    return (f"held-out text->video R@1 {t2v['R@1']:.2f}, R@5 {t2v['R@5']:.2f} (chance {1 / demo.heldout.videos:.2f}) "
            f"over {demo.heldout.queries} queries; story moments R@1 at IoU>={'/'.join(map(str, IOU_AT))} "
            f"{spans(moments)} (the best window alone: {spans(window)})")


def over_seeds(model_dir: Path, out: Path, seeds: list[int]) -> None:
    """The demo's figures on the held-out clips and story of each corpus seed, and their mean."""
    header = ["seed", "held-out R@1", *(f"{name} {k}" for name in ("window", "moment")
                                        for k in (*(f"IoU>={t}" for t in IOU_AT), "mIoU"))]
    rows = []
    for seed in seeds:
        demo = run(model_dir, out / f"seed-{seed}", seed)
        moments, window = demo.spans
        rows.append([demo.heldout.text_to_video["R@1"], *window.values(), *moments.values()])
        print(f"seed {seed}: {figures(demo)}", flush=True)
    print("  ".join(header))
    for label, row in [*zip(map(str, seeds), rows), ("mean", np.mean(rows, axis=0))]:
        print("  ".join(f"{v:.2f}".rjust(len(h)) if n else label.rjust(len(h))
                        for n, (h, v) in enumerate(zip(header, [0, *row]))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("out") / "demo" / "models" / MODEL_NAME)
    parser.add_argument("--out", type=Path, default=Path("out") / "demo")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="measure the held-out clips and stories of these corpus seeds (under OUT/seed-N)")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    verbose(argv)  # the server it starts inherits the choice
    start = time.perf_counter()
    if args.seeds:
        over_seeds(args.model_dir, args.out, args.seeds)
        print(f"demo: {len(args.seeds)} seeds in {time.perf_counter() - start:.1f} s")
        return 0
    demo = run(args.model_dir, args.out)
    print(f"demo: {len(demo.pairs)} held-out clips and a {len(demo.events)}-event story video, served from "
          f"{args.model_dir}; index {args.out / 'index'}: {demo.indexed}")
    print(as_table(demo.shown), end="")
    for (video, sentence), matches in zip(demo.pairs, demo.shown.matches):
        print(f"  {'ok  ' if matches and matches[0].video == video else 'MISS'} {sentence!r} -> "
              f"{Path(matches[0].video).name if matches else '-'} (answer {Path(video).name})")
    print("story moments (each event's query searched inside the story video):")
    for (text, start_s, end_s), (match,) in zip(demo.events, demo.moments.matches):
        overlap = float(iou(np.array([[match.start, match.end]]), np.array([[start_s, end_s]]))[0])
        print(f"  IoU {overlap:.2f} {text!r}: {match.start:.1f}-{match.end:.1f} s (narrated event at "
              f"{start_s:.1f}-{end_s:.1f} s)")
    report = args.out / "report.html"
    combined = Result(demo.shown.queries + demo.moments.queries, demo.shown.matches + demo.moments.matches)
    html_report.write(report, html_report.render(combined, "S3D MIL-NCE demo: the tiny model trained on the "
                                                           "narrated demo world"))
    print(figures(demo))
    print(f"demo: wrote {report}; done in {time.perf_counter() - start:.1f} s")
    print(f"demo: to search it on a web page, run `make serve MODEL_DIR={args.model_dir}` in one terminal and "
          f"`make ui INDEX={args.out / 'index'}` in another, then open http://localhost:{UI_PORT}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
