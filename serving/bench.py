"""Served-path figures measured in one run (`make bench`):
- indexing throughput through the embedded server over loopback gRPC against the same model called in-process,
  on the same windows;
- indexing memory: one client process per video and way (every window held, as before streaming, against
  streamed), its peak RSS and windows/s, for a 2-hour video, a 20-minute one at the released model's windows
  (the case that took 3.6 GB before) and a 1080p one;
- server-side batching: 8 concurrent clients sending single-window requests, batching off against on
  (`serving/config/batching.config`), windows/s and latency percentiles;
- the search page's API under load: 20 concurrent HTTP clients for a bounded time against `s3d-client ui`'s
  app on loopback, queries repeated (the text cache answers) against all distinct (each embedded): requests/s,
  p50/p99 and errors.

`python -m serving.bench [--model-dir models/s3d_milnce] [--long-minutes 120] [--mid-minutes 20] [--hd-seconds 60]`
(the newest version is used).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from s3d_retrieval.model.quiet import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow is imported
import tensorflow as tf  # noqa: E402

from s3d_retrieval.client.decode.samples import sweeping_video
from s3d_retrieval.client.defaults import FRAMES, MODEL_NAME, SIZE, VIDEO_UINT8_SIGNATURE
from s3d_retrieval.client.transport.session import Options as ClientOptions
from s3d_retrieval.client.api import Client
from s3d_retrieval.client.transport.session import Session
from s3d_retrieval.serving import launcher
from s3d_retrieval.serving.config import parse_batching
from s3d_retrieval.serving.embedded.batching import BatchingOptions
from s3d_retrieval.serving.embedded.server import EmbeddedServer, Options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.bench", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models") / MODEL_NAME)
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--long-minutes", type=float, default=120.0, help="length of the long video (96x64)")
    parser.add_argument("--mid-minutes", type=float, default=20.0,
                        help=f"length of the 96x64 video embedded at {FRAMES}x{SIZE}x{SIZE}")
    parser.add_argument("--hd-seconds", type=float, default=60.0, help="length of the 1080p video")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the batching figures")
    parser.add_argument("--requests", type=int, default=12, help="single-window requests per client")
    parser.add_argument("--only", choices=("search-api",), help="run only these figures")
    parser.add_argument("--ui-clients", type=int, default=20, help="concurrent clients of the search API figures")
    parser.add_argument("--ui-seconds", type=float, default=15.0, help="how long each search API load lasts")
    args = parser.parse_args(argv)
    version = max(int(p.name) for p in args.model_dir.iterdir() if p.name.isdigit())
    frames = np.random.default_rng(0).integers(0, 256, (args.windows, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    step = ClientOptions().windows_per_request

    signature = tf.saved_model.load(str(args.model_dir / str(version)), tags=["serve"]).signatures[VIDEO_UINT8_SIGNATURE]

    def in_process() -> None:
        for i in range(0, len(frames), step):
            signature(frames=tf.constant(frames[i: i + step]))

    plan = launcher.Plan(MODEL_NAME, args.model_dir, None, 0, 0, False, None)
    server = EmbeddedServer(Options(models=launcher.model_server_config(plan), host="127.0.0.1", port=0, rest_port=None)).start()
    if args.only == "search-api":
        try:
            return search_page_load(f"127.0.0.1:{server.port}", args.ui_clients, args.ui_seconds)
        finally:
            server.stop(grace=5)
    try:
        with Session(ClientOptions(address=f"127.0.0.1:{server.port}")) as session:
            rows = []
            for name, run in (("in-process", in_process), ("served (gRPC)", lambda: session.embed_windows(frames))):
                run()  # warm-up
                start = time.perf_counter()
                run()
                rows.append((name, args.windows / (time.perf_counter() - start)))
        print(f"\n{'indexing ' + str(FRAMES) + 'x' + str(SIZE) + 'x' + str(SIZE) + ', version ' + str(version):34} "
              f"{'windows/s':>12} {'x in-process':>13}")
        for name, rate in rows:
            print(f"  {name:32} {rate:12.1f} {rate / rows[0][1]:13.2f}")
        indexing_memory(f"127.0.0.1:{server.port}", args.long_minutes, args.mid_minutes, args.hd_seconds)
        search_page_load(f"127.0.0.1:{server.port}", args.ui_clients, args.ui_seconds)
    finally:
        server.stop(grace=5)
    batching_load(plan, args.clients, args.requests)


def batching_load(plan: launcher.Plan, clients: int, requests: int) -> None:
    """Concurrent single-window clients against the same model without and with server-side batching."""
    window = np.random.default_rng(1).integers(0, 256, (1, FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    print(f"\n{f'{clients} clients x {requests} single windows':34} {'windows/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'x off':>6}")
    base = None
    for name, batching in (("batching off", None), ("batching.config", BatchingOptions.from_proto(parse_batching()))):
        server = EmbeddedServer(Options(models=launcher.model_server_config(plan), host="127.0.0.1", port=0,
                                        rest_port=None, batching=batching)).start()
        options = ClientOptions(address=f"127.0.0.1:{server.port}", timeout=600)

        def client(_: int) -> list[float]:
            times = []
            with Session(options) as session:  # a channel each, as separate processes would have
                for _ in range(requests):
                    start = time.perf_counter()
                    session.embed_windows(window)
                    times.append(time.perf_counter() - start)
            return times

        try:
            client(0)  # warm-up
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                latencies = np.concatenate(list(pool.map(client, range(clients)))) * 1000
            rate = clients * requests / (time.perf_counter() - start)
        finally:
            server.stop(grace=5)
        base = base or rate
        p50, p99 = np.percentile(latencies, [50, 99])
        print(f"  {name:32} {rate:10.1f} {p50:8.0f} {p99:8.0f} {rate / base:6.2f}")


def indexing_memory(address: str, long_minutes: float, mid_minutes: float, hd_seconds: float) -> None:
    """Client peak RSS and windows/s embedding one video, whole (before streaming) against streamed."""
    print(f"\n{'indexing one video, client':34} {'windows':>8} {'peak MB':>8} {'streamed':>9} {'ratio':>6} "
          f"{'win/s':>7} {'streamed':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(f"{long_minutes:g} min 96x64, 16x64x64 windows",
                  sweeping_video(Path(tmp) / "long.avi", long_minutes * 60, 10, 96, 64), 16, 64),
                 (f"{mid_minutes:g} min 96x64, {FRAMES}x{SIZE}x{SIZE} windows",
                  sweeping_video(Path(tmp) / "mid.avi", mid_minutes * 60, 10, 96, 64), FRAMES, SIZE),
                 (f"{hd_seconds:g} s 1920x1080, {FRAMES}x{SIZE}x{SIZE}",
                  sweeping_video(Path(tmp) / "hd.avi", hd_seconds, 10, 1920, 1080), FRAMES, SIZE)]
        for name, path, frames, size in cases:
            whole, ours = (json.loads(subprocess.run(
                [sys.executable, "-m", "s3d_retrieval.client.bench", "video-memory", address, str(path), str(frames), str(size),
                 how], check=True, capture_output=True, text=True).stdout) for how in ("whole", "streamed"))
            rate, our_rate = whole["windows"] / whole["seconds"], ours["windows"] / ours["seconds"]
            print(f"  {name:32} {ours['windows']:8} {whole['peak_mb']:8.0f} {ours['peak_mb']:9.0f} "
                  f"{ours['peak_mb'] / whole['peak_mb']:6.2f} {rate:7.1f} {our_rate:9.1f} {our_rate / rate:6.2f}")


SUBJECTS = ("a person", "a dog", "two children", "a cook", "a cyclist", "a band", "someone", "a woman", "a man",
            "a cat")
ACTIONS = ("playing guitar", "cutting tomatoes", "running on a beach", "riding a bike", "pouring water",
           "opening a door", "dancing", "washing dishes", "climbing stairs", "throwing a ball")


def search_page_load(address: str, clients: int, seconds: float) -> None:
    """`clients` threads, each with its own keep-alive connection, searching the UI's API for `seconds`."""
    import http.client
    import urllib.parse

    from s3d_retrieval.client.decode.video import Sampling
    from s3d_retrieval.client.library.index import Index
    from s3d_retrieval.client.library.indexing import index_videos
    from s3d_retrieval.client.ui.app import create_app
    from s3d_retrieval.client.ui.catalog import Catalog
    from s3d_retrieval.client.ui.server import in_thread

    sentences = [f"{s} {a}" for s in SUBJECTS for a in ACTIONS]  # 100
    print(f"\n{f'search API, {clients} clients x {seconds:g} s':34} {'requests':>9} {'req/s':>7} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'errors':>7} {'x cached':>8}")
    with tempfile.TemporaryDirectory() as tmp, Client(address) as api:
        session = api.pinned()
        library = Path(tmp) / "library"
        library.mkdir()
        for i in range(8):
            sweeping_video(library / f"clip{i}.avi", 20 + 5 * i, 10, 96, 64)
        with Index(Path(tmp) / "index", MODEL_NAME, Sampling(frames=16, size=64), create=True) as index:
            index_videos(session, index, [library])
            index.refresh_search()
        rows = []
        for name, distinct in (("repeated queries (cached)", False), ("every query new (embedded)", True)):
            catalog = Catalog(lambda: Index(Path(tmp) / "index", MODEL_NAME, read_only=True))
            with in_thread(create_app(catalog, api, api)) as root:
                host, port = urllib.parse.urlsplit(root).netloc.split(":")
                deadline = time.monotonic() + seconds

                def client(k: int) -> tuple[list[float], int]:
                    times, errors, n = [], 0, 0
                    connection = http.client.HTTPConnection(host, int(port), timeout=60)
                    while time.monotonic() < deadline:
                        query = f"{sentences[(k * 7 + n) % len(sentences)]}" + (f" {k}-{n}" if distinct else "")
                        n += 1
                        start = time.perf_counter()
                        connection.request("GET", "/api/search?" + urllib.parse.urlencode({"q": query, "top": 5}))
                        answer = connection.getresponse()
                        body = answer.read()
                        times.append(time.perf_counter() - start)
                        errors += answer.status != 200 or not json.loads(body)["results"][0]["matches"]
                    connection.close()
                    return times, errors

                start = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    done = list(pool.map(client, range(clients)))
                elapsed = time.perf_counter() - start
            catalog.close()
            latencies = np.concatenate([t for t, _ in done]) * 1000
            rows.append((name, len(latencies), len(latencies) / elapsed, *np.percentile(latencies, [50, 99]),
                         sum(e for _, e in done)))
        for name, count, rate, p50, p99, errors in rows:
            print(f"  {name:32} {count:9} {rate:7.1f} {p50:8.1f} {p99:8.1f} {errors:7} {rate / rows[0][2]:8.2f}")


if __name__ == "__main__":
    main()
