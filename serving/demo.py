"""`make demo`: the whole pipeline offline, with rankings whose answers are known.

The demo model (`model/demo/s3d-demo-tiny`, made by `make demo-model`) is the tiny network trained with MIL-NCE
on the narrated demo corpus (`python -m model corpus`). This script exports it if needed, starts the embedded
server, writes the corpus's held-out clips and story video (never seen in training), indexes them with the
sampling the served model reports, and then
- ranks the held-out clips for their queries: the `held-out text->video R@1` line, against chance;
- searches the story video for its events: the moment each query lands on, against the known one;
- prints a table of a few queries and writes an HTML report.
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
from dataclasses import replace
from pathlib import Path

import numpy as np

from client.outputs import html_report
from client.defaults import MODEL_NAME, UI_PORT
from client.library.evalset import read_sentences
from client.library.index import Index
from client.library.indexing import index_videos
from client.library.metrics import ranks, summary
from client.library.rank import Windows, best_per_video, rank
from client.outputs.report import as_table
from client.library.search import Result, search_index
from client.transport.session import Options, Session
from client.decode.video import model_sampling
from model.quiet import add_verbose_flag, verbose

SHOWN = 4  # held-out queries shown in the table and the report


def start_server(model_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--embedded", "--model-dir", str(model_dir),
                             "--host", "127.0.0.1", "--port", "0", "--rest-port", "0"],
                            stdout=subprocess.PIPE, stderr=None if verbose() else subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    if "gRPC " not in line:
        proc.kill()
        raise SystemExit(f"error: the embedded server did not start on {model_dir}; run `make serve` to see why")
    return proc, line.split("gRPC ")[1].split(";")[0].split(",")[0].strip()


def subset(windows: Windows, keep: set[str]) -> Windows:
    """The windows of the videos in `keep`, in the same order."""
    rows = np.isin(windows.owner, [i for i, v in enumerate(windows.videos) if v in keep])
    videos = [v for v in windows.videos if v in keep]
    owner = np.searchsorted(videos, np.array(windows.videos)[windows.owner[rows]]) if videos else windows.owner[rows]
    return Windows(videos, windows.embeddings[rows], owner, windows.spans[rows])


def heldout_line(session: Session, windows: Windows, pairs: list[tuple[str, str]]) -> str:
    """Text->video recall over the held-out clips only, each clip scoring as its best window."""
    clips = subset(windows, {v for v, _ in pairs})
    best, _ = best_per_video(session.embed_text([s for _, s in pairs]) @ clips.embeddings.T, clips.owner)
    figures = summary(ranks(best, np.array([clips.videos.index(v) for v, _ in pairs])))
    return (f"held-out text->video R@1 {figures['R@1']:.2f}, R@5 {figures['R@5']:.2f} "
            f"(chance {1 / len(clips.videos):.2f}) over {len(pairs)} queries")


def story_moments(session: Session, windows: Windows, story: Path, rows: list[dict]) -> tuple[Result, list[str]]:
    """Each story event searched inside the story video: the best window against the known span."""
    only = subset(windows, {str(story)})
    queries = [r["text"] for r in rows]
    matches = rank(session.embed_text(queries), only, 1)
    lines = []
    for row, (match,) in zip(rows, matches):
        start, end = float(row["start"]), float(row["end"])
        hit = start <= (match.start + match.end) / 2 <= end  # the matching window is centred in the event
        lines.append(f"  {'ok  ' if hit else 'MISS'} {row['text']!r}: {match.start:.1f}-{match.end:.1f} s "
                     f"(narrated event at {start:.1f}-{end:.1f} s)")
    return Result(queries, matches), lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("out") / "demo" / "models" / MODEL_NAME)
    parser.add_argument("--out", type=Path, default=Path("out") / "demo")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    verbose(argv)  # the server it starts inherits the choice
    start = time.perf_counter()
    world = args.out / "corpus"
    if not world.exists():
        from model.corpus import write_corpus

        write_corpus(world, videos=0)  # the held-out clips and the story: the demo model never saw them
    heldout_csv, story_csv = world / "heldout" / "queries.csv", world / "story" / "story.csv"
    pairs, _ = read_sentences(heldout_csv, heldout_csv.parent)
    with open(story_csv, newline="") as f:
        story_rows = list(csv.DictReader(f))
    story = (world / "story" / "story.webm").resolve()
    print(f"demo: {len(pairs)} held-out clips and a {len(story_rows)}-event story video in {world}")
    server, address = start_server(args.model_dir)
    print(f"demo: embedded server on {address} serving {args.model_dir}")
    try:
        with Session(Options(address=address)) as session:
            sampling = model_sampling(session.preprocessing())
            sampling = replace(sampling, stride=sampling.stride / 2)  # half-window steps: finer moments
            print(f"demo: the served model asks for {sampling.frames} frames at {sampling.fps:g} fps, "
                  f"{sampling.size}x{sampling.size}")
            with Index(args.out / "index", MODEL_NAME, sampling, create=True) as index:
                stats = index_videos(session, index, [world / "heldout", world / "story"])
                print(f"demo: index {args.out / 'index'}: {stats.summary()}")
                windows = index.windows()
                shown = search_index(session, [s for _, s in pairs[:SHOWN]], index, top=3)
            summary_line = heldout_line(session, windows, pairs)
            moments, moment_lines = story_moments(session, windows, story, story_rows)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    print(as_table(shown), end="")
    for (video, sentence), matches in zip(pairs, shown.matches):
        print(f"  {'ok  ' if matches and matches[0].video == video else 'MISS'} {sentence!r} -> "
              f"{Path(matches[0].video).name if matches else '-'} (answer {Path(video).name})")
    print("story moments (each event's query searched inside the story video):")
    print("\n".join(moment_lines))
    report = args.out / "report.html"
    combined = Result(shown.queries + moments.queries, shown.matches + moments.matches)
    html_report.write(report, html_report.render(combined, "S3D MIL-NCE demo: the tiny model trained on the "
                                                           "narrated demo world"))
    print(summary_line)
    print(f"demo: wrote {report}; done in {time.perf_counter() - start:.1f} s")
    print(f"demo: to search it on a web page, run `make serve MODEL_DIR={args.model_dir}` in one terminal and "
          f"`make ui INDEX={args.out / 'index'}` in another, then open http://localhost:{UI_PORT}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
