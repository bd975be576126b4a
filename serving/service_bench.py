"""Long-service figures (#31) measured in one run (`make bench`), side by side:
- the Python API against the page on one synthetic 1M-window index (4,000 videos of 250 windows, IVF-SQ8): a
  `Client`'s first search (it opens the index and loads the structure, what every call cost before it kept them),
  its next searches, and the page's `/api/search`, each query new (embedded by the embedded server);
- the page while a writer commits into that index: p50 of `/api/search` and the page process's peak RSS, idle,
  with the structure brought up to date every `REFRESH_EVERY` windows of the run (as `index` does now), and only
  at the run's end (as before);
- filters at 1M videos (one window each): a search's extra milliseconds for `--under`, `--glob` (one star, and a
  pattern checked by fnmatch on its candidates) and durations, vectorised (now) against a Python call per video;
- following a promote: seconds from `promote NAME NEW` until the page (`--reload-every 1`, its default) and a
  `Client` answer from NEW, asked in a loop.

`python -m serving.service_bench [--model-dir models/s3d_milnce] [--part api|writing|filters|promote]`.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

from s3d_retrieval.client.api import Client
from s3d_retrieval.client.bench import status_mib, synthetic_windows
from s3d_retrieval.client.decode.video import Sampling
from s3d_retrieval.client.defaults import MODEL_NAME
from s3d_retrieval.client.library import indexing, vectors
from s3d_retrieval.client.library.filters import Filters
from s3d_retrieval.client.library.index import Index
from s3d_retrieval.client.library.store import Entry

VIDEOS, PER_VIDEO = 4000, 250  # the 1M-window index
COMMIT = 16  # videos per commit, `index`'s --flush-every
PACE = 0.2  # seconds between a writer's commits while the page is measured (a real run embeds between them)
SUBJECTS = ("a person", "a dog", "two children", "a cook", "a cyclist")
ACTIONS = ("playing guitar", "cutting tomatoes", "running on a beach", "riding a bike", "pouring water")
WRITTEN = 800  # videos a writer commits while the page is measured (200,000 windows)
SPANS = np.stack([np.arange(PER_VIDEO) * 3.2, np.arange(PER_VIDEO) * 3.2 + 3.2], axis=1)


def fill(folder: Path, matrix: np.ndarray, first: int, videos: int, refresh_every: float | None = None,
         pace: float = 0.0) -> None:
    """Commit `videos` synthetic videos (rows of `matrix` from video `first` on) as `index` does: `COMMIT` a
    transaction, the structure brought up to date every `refresh_every` windows (None: not during the run); `pace`
    seconds between commits."""
    with Index(folder, MODEL_NAME, Sampling(size=64), create=True) as index:
        since = 0
        for start in range(first, first + videos, COMMIT):
            chosen = range(start, min(start + COMMIT, first + videos))
            index.commit([Entry(f"/lib/{v % 40:02d}/video{v:06d}.mp4", f"s{v}", 1, 1.0, 1, 800.0, "", 0, 0)
                          for v in chosen],
                         [np.asarray(matrix[(v % VIDEOS) * PER_VIDEO: (v % VIDEOS + 1) * PER_VIDEO]) for v in chosen],
                         [SPANS] * len(chosen))
            since += len(chosen) * PER_VIDEO
            if refresh_every is not None and since >= refresh_every:
                index.refresh_search(wait=False, full=False)
                since = 0
            time.sleep(pace)
        index.refresh_search()


def sentences(count: int, salt: str) -> list[str]:
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {ACTIONS[(i // len(SUBJECTS)) % len(ACTIONS)]} {salt}{i}"
            for i in range(count)]


def page_p50(address: str, port: int, queries: list[str]) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    times = []
    for query in queries:
        start = time.perf_counter()
        connection.request("GET", "/api/search?" + urllib.parse.urlencode({"q": query, "top": 10}))
        answer = connection.getresponse()
        body = answer.read()
        times.append(time.perf_counter() - start)
        assert answer.status == 200 and json.loads(body)["results"][0]["matches"], body[:300]
    connection.close()
    return float(np.median(times)) * 1000


def start_page(folder: Path, address: str, reload_every: float = 0.2) -> tuple[subprocess.Popen, int]:
    """`s3d-client ui` over `folder` in a process of its own (its memory measured alone); its port."""
    page = subprocess.Popen([sys.executable, "-m", "s3d_retrieval.client", "--server", address, "ui", "--index",
                             str(folder), "--port", "0", "--reload-every", str(reload_every)],
                            stderr=subprocess.PIPE, text=True)
    assert page.stderr is not None  # stderr=PIPE
    line = page.stderr.readline()
    while "serving" not in line:
        if page.poll() is not None or not line:
            raise RuntimeError(f"the page did not start: {line}{page.stderr.read()}")
        line = page.stderr.readline()
    threading.Thread(target=page.stderr.read, daemon=True).start()  # drained, never blocks the page
    return page, int(line.split("http://localhost:")[1].split("/")[0])


class AnonPeak(threading.Thread):
    """The most anonymous memory (heap: what a query allocates, not the memory-mapped matrices) a process holds,
    read from /proc every 50 ms until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            status = Path(f"/proc/{self.pid}/status").read_text().splitlines()
            self.peak = max(self.peak, int(next(x for x in status if x.startswith("RssAnon:")).split()[1]) / 1024)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak


def api_against_page(folder: Path, address: str) -> None:
    print(f"\n{'search, 1M windows (4,000 videos)':38} {'p50 ms':>8} {'x page':>7}")
    page, port = start_page(folder, address)
    try:
        page_p50(address, port, sentences(3, "warm"))
        page_ms = page_p50(address, port, sentences(40, "page"))
    finally:
        page.terminate()
        page.wait(timeout=60)
    cold = []
    for query in sentences(3, "cold"):
        with Client(address) as api:  # a client that opened the index for this call alone
            start = time.perf_counter()
            api.search(query, index=folder, top=10)
            cold.append(time.perf_counter() - start)
    with Client(address) as api:
        api.search("warm up", index=folder, top=10)
        kept = []
        for query in sentences(40, "api"):
            start = time.perf_counter()
            api.search(query, index=folder, top=10)
            kept.append(time.perf_counter() - start)
    for name, ms in (("Client, index opened per call (before)", np.median(cold) * 1000),
                     ("Client, index kept open (now)", np.median(kept) * 1000), ("page /api/search", page_ms)):
        print(f"  {name:36} {ms:8.1f} {ms / page_ms:7.2f}")


def page_while_writing(folder: Path, matrix: np.memmap, address: str) -> None:
    print(f"\n{'the page while a run commits':38} {'p50 ms':>8} {'last 1/4':>8} {'x idle':>7} {'peak heap MiB':>13} "
          f"{'run s':>6}   "
          f"({WRITTEN} videos, {WRITTEN * PER_VIDEO:,} windows, {COMMIT} a commit every {PACE:g} s)")
    base = None
    for name, refresh in (("idle", None), (f"structure every {indexing.REFRESH_EVERY:,} windows (now)",
                                           float(indexing.REFRESH_EVERY)), ("structure at the run's end (before)",
                                                                              float("inf"))):
        page, port = start_page(folder, address)
        try:
            page_p50(address, port, sentences(3, "warm"))
            memory = AnonPeak(page.pid)
            memory.start()
            if refresh is None:
                times, run = [page_p50(address, port, [query]) for query in sentences(60, "idle")], ""
            else:
                first = VIDEOS + (1 if "now" in name else 2) * WRITTEN
                began = time.perf_counter()
                writer = subprocess.Popen([sys.executable, "-m", "s3d_retrieval.serving.service_bench", "write",
                                           str(folder), str(matrix.filename), str(first), str(refresh)])
                times = []
                while writer.poll() is None:
                    times.append(page_p50(address, port, sentences(1, f"w{len(times)}")))
                assert writer.returncode == 0
                run = f"{time.perf_counter() - began:6.1f}"
            peak = memory.stop()
        finally:
            page.terminate()
            page.wait(timeout=60)
        ms, last = float(np.median(times)), float(np.median(times[-max(1, len(times) // 4):]))
        base = base or ms
        print(f"  {name:36} {ms:8.1f} {last:8.1f} {ms / base:7.2f} {peak:13.0f} {run:>6}")


def filters_at_scale(rows: int = 1_000_000) -> None:
    """One window per video, 1M videos in 40 folders of 25 subfolders; each filter's extra cost on a search."""
    from s3d_retrieval.client.bench import sentence_queries

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        matrix = synthetic_windows(folder / "m.npy", rows, seed=5)
        paths = [f"/lib/{v % 40:02d}/{(v // 40) % 25:02d}/video{v:07d}.{'mp4' if v % 3 else 'webm'}"
                 for v in range(rows)]
        parts = vectors.Parts([(p, float(10 + v % 600)) for v, p in enumerate(paths)],
                              lambda v: (matrix[v: v + 1], np.array([[0.0, 3.2]])), [1] * rows,
                              [f"m:{v}" for v in range(rows)])
        vectors.build(folder, parts, "bench", "ivf")
        structure = vectors.VectorSearch(folder)
        targets = np.asarray(matrix[np.random.default_rng(1).choice(rows, 20, replace=False)])
        queries = sentence_queries(targets, np.random.default_rng(3))
        cases = [("none", Filters()), ("--under one folder of 40", Filters(("/lib/07",))),
                 ("--glob '*.webm'", Filters(glob="*.webm")), ("--glob '/lib/0?/1*/*.mp4'", Filters(glob="/lib/0?/1*/*.mp4")),
                 ("--min-duration 300", Filters(min_duration=300.0))]
        print(f"\n{'filters, 1M videos, top 10':38} {'search ms':>9} {'mask ms, 1st/next':>17} "
              f"{'per video ms':>12} {'x faster':>8}")
        for name, chosen in cases:
            start = time.perf_counter()
            structure.select(chosen)  # the first: the segment's sorted paths loaded, a pattern's candidates checked
            first = (time.perf_counter() - start) * 1000
            searches, masks = [], []
            for q in queries:
                start = time.perf_counter()
                mask = structure.select(chosen)
                masks.append(time.perf_counter() - start)
                structure.search(q[None], 10, None if mask is None else np.flatnonzero(mask))
                searches.append(time.perf_counter() - start)
            start = time.perf_counter()
            if chosen != Filters():
                [chosen.accepts(p, d) for p, d in structure.videos]  # before: a Python call per video
            python_ms = (time.perf_counter() - start) * 1000
            mask_ms = float(np.median(masks)) * 1000
            shown = f"{python_ms / mask_ms:8.0f}" if chosen != Filters() else ""
            print(f"  {name:36} {np.median(searches) * 1000:9.1f} {first:8.1f}/{mask_ms:<8.1f} {python_ms:12.0f} "
                  f"{shown}")


def promote_following(address: str) -> None:
    """Two small indexes of the same synthetic windows under different paths, a name on the first; the page and a
    Client asked in a loop while the name moves to the second: how long until each answers from it."""
    print(f"\n{'following a promote':38} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp, Client(address) as api:
        matrix = synthetic_windows(Path(tmp) / "m.npy", 200 * PER_VIDEO, seed=3)
        version = api.model_version()  # the bench serves one version: the indexes are its
        for side in ("old", "new"):
            with Index(Path(tmp) / side, MODEL_NAME, Sampling(size=64), create=True, model_version=version) as index:
                index.commit([Entry(f"/lib/{side}/video{v:04d}.mp4", f"s{v}", 1, 1.0, version, 800.0, "", 0, 0)
                              for v in range(200)],
                             [np.asarray(matrix[v * PER_VIDEO: (v + 1) * PER_VIDEO]) for v in range(200)], [SPANS] * 200)
                index.refresh_search()
        name = Path(tmp) / "library"
        api.promote(name, Path(tmp) / "old")
        page, port = start_page(name, address, reload_every=1.0)
        try:
            page_p50(address, port, sentences(2, "warm"))
            api.search("warm up", index=name, top=3)
            api.promote(name, Path(tmp) / "new")
            moved = time.perf_counter()
            followed: dict[str, float] = {}
            while len(followed) < 2:
                if "api" not in followed and "/new/" in api.search("a dog", index=name, top=1).matches[0][0].video:
                    followed["api"] = time.perf_counter() - moved
                if "page" not in followed and "/new/" in page_answer(port, "a dog"):
                    followed["page"] = time.perf_counter() - moved
        finally:
            page.terminate()
            page.wait(timeout=60)
    print(f"  {'the page (--reload-every 1)':36} {followed['page']:8.2f}")
    print(f"  {'a Client (checks at each call)':36} {followed['api']:8.3f}")


def page_answer(port: int, query: str) -> str:
    """The page's first match for `query`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("GET", "/api/search?" + urllib.parse.urlencode({"q": query, "top": 1}))
    body = json.loads(connection.getresponse().read())
    connection.close()
    return body["results"][0]["matches"][0]["video"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["write"]:  # the writer of `page_while_writing`, in a process of its own
        where, stored, first, refresh = argv[1:]
        return fill(Path(where), np.load(stored, mmap_mode="r"), int(first), WRITTEN, float(refresh), PACE)
    parser = argparse.ArgumentParser(prog="python -m serving.service_bench", description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models") / MODEL_NAME)
    parser.add_argument("--part", choices=("api", "writing", "filters", "promote"), action="append")
    args = parser.parse_args(argv)
    parts = args.part or ["api", "writing", "filters", "promote"]
    if "filters" in parts:
        filters_at_scale()
    if not {"api", "writing", "promote"} & set(parts):
        return
    from s3d_retrieval.serving import launcher  # TensorFlow, for the embedded server: not in the writer's process
    from s3d_retrieval.serving.embedded.server import EmbeddedServer, Options

    plan = launcher.Plan(MODEL_NAME, args.model_dir, None, 0, 0, False, None)
    server = EmbeddedServer(Options(models=launcher.model_server_config(plan), host="127.0.0.1", port=0,
                                    rest_port=None)).start()
    address = f"127.0.0.1:{server.port}"
    try:
        if "promote" in parts:
            promote_following(address)
        if not {"api", "writing"} & set(parts):
            return
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "index"
            matrix = synthetic_windows(Path(tmp) / "m.npy", VIDEOS * PER_VIDEO, seed=1)
            start = time.perf_counter()
            fill(folder, matrix, 0, VIDEOS)
            print(f"\n(a synthetic index of {VIDEOS * PER_VIDEO:,} windows built in {time.perf_counter() - start:.0f} s; "
                  f"this process holds {status_mib('VmRSS'):.0f} MiB)")
            if "api" in parts:
                api_against_page(folder, address)
            if "writing" in parts:
                page_while_writing(folder, matrix, address)
    finally:
        server.stop(grace=5)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
