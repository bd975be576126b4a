"""Client figures measured in one run, printed side by side as ratios (`make bench`).

- preprocessing: ms per clip, ours (colab and segments sampling) against a colab-style loader on the same files;
- requests: build + encode time and bytes of uint8 against float32 frames;
- import: `import client.cli` against `import tensorflow_serving.apis` (fresh processes);
- search at scale: 1M and 10M synthetic windows (20 GB of float32 at 10M, written under TMPDIR),
  exact memory-mapped scan against faiss IVF-SQ8, latency, recall@10 of faiss against exact, build time, memory.

`python -m client.bench video-memory ADDRESS VIDEO FRAMES SIZE {whole,streamed}` is one side of the served
bench's indexing-memory figures: it embeds one video in this fresh process and prints its peak RSS (JSON).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from client.transport import protos
from client.defaults import FPS, FRAMES, MODEL_NAME, SIZE
from client.library import vectors
from client.decode.samples import real_clips, synthetic_clips
from client.transport.tensors import to_proto
from client.decode.video import Sampling, load
from client.library.stream import embed_stream
from client.memory import release_big_blocks
from client.transport.session import Options, Session


SEARCH_SIZES = [1_000_000, 10_000_000]


def colab_loader(path: str, max_frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """A loader written like the official colab's: read frames, crop the centre square, resize, BGR->RGB,
    repeat when short, divide by 255 (float64). The baseline our `colab` sampling must match."""
    cap = cv2.VideoCapture(path)
    frames = []
    while len(frames) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        y, x = frame.shape[:2]
        m = min(y, x)
        sy, sx = y // 2 - m // 2, x // 2 - m // 2
        frames.append(cv2.resize(frame[sy:sy + m, sx:sx + m], (size, size))[:, :, [2, 1, 0]])
    cap.release()
    frames = np.array(frames)
    if len(frames) < max_frames:
        frames = frames.repeat(int(math.ceil(max_frames / float(len(frames)))), axis=0)
    return frames[:max_frames] / 255.0


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Seconds of the fastest of `repeat` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def preprocessing(files: list[str]) -> None:
    print(f"{'preprocessing, ms per clip':34} {'colab loader':>12} {'ours colab':>11} {'ours segments':>14} {'ratio':>6}")
    for path in files:
        base = best_of(lambda: colab_loader(path)) * 1000
        colab = best_of(lambda: load(path, Sampling(mode="colab"))) * 1000
        segments = best_of(lambda: load(path, Sampling())) * 1000
        print(f"  {Path(path).name:32} {base:12.1f} {colab:11.1f} {segments:14.1f} {colab / base:6.2f}")


def requests() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 224, 224, 3), dtype=np.uint8)

    def build(array):
        request = protos.PredictRequest()
        request.model_spec.name = MODEL_NAME
        to_proto(array, into=request.inputs["frames"])
        return request.SerializeToString()

    as_float = frames.astype(np.float32) / np.float32(255)
    u8_s, f32_s = best_of(lambda: build(frames)), best_of(lambda: build(frames.astype(np.float32) / np.float32(255)))
    u8_b, f32_b = len(build(frames)), len(build(as_float))
    print(f"\n{'request of 4 windows 32x224x224':34} {'uint8':>12} {'float32':>11} {'ratio':>6}")
    print(f"  {'build + encode, ms':32} {u8_s * 1000:12.1f} {f32_s * 1000:11.1f} {f32_s / u8_s:6.1f}")
    print(f"  {'bytes on the wire, MB':32} {u8_b / 1e6:12.1f} {f32_b / 1e6:11.1f} {f32_b / u8_b:6.1f}")


def imports() -> None:
    def seconds(module: str) -> float | None:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
            if done.returncode:
                return None
            runs.append(time.perf_counter() - start)
        return min(runs)

    ours, official = seconds("client.cli"), seconds("tensorflow_serving.apis.prediction_service_pb2_grpc")
    print(f"\n{'import, s (fresh process)':34} {'client.cli':>12} {'tf_serving':>11} {'ratio':>6}")
    if official is None:
        print(f"  {'':32} {ours:12.2f} {'(absent)':>11}")
    else:
        print(f"  {'':32} {ours:12.2f} {official:11.2f} {official / ours:6.1f}")


def synthetic_search(folder: Path, rows: int, dim: int = 512, per_video: int = 10) -> None:
    """A `search/` structure of `rows` synthetic windows (as `vectors.build` writes it), in 1M-row chunks:
    topics, videos near a topic, windows near their video, unit length, as real embeddings cluster."""
    rng = np.random.default_rng(0)
    base = folder / vectors.FOLDER
    base.mkdir(parents=True)
    topics = rng.standard_normal((1024, dim), dtype=np.float32)
    matrix = np.lib.format.open_memmap(base / "embeddings.npy", "w+", np.float32, (rows, dim))
    for start in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - start)
        videos = topics[rng.integers(0, len(topics), n // per_video + 1)]
        videos += 0.6 * rng.standard_normal(videos.shape, dtype=np.float32)
        chunk = np.repeat(videos, per_video, axis=0)[:n] + 0.4 * rng.standard_normal((n, dim), dtype=np.float32)
        matrix[start: start + n] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    matrix.flush()
    count = -(-rows // per_video)
    np.save(base / "first.npy", np.minimum(np.arange(count + 1) * per_video, rows).astype(np.int64))
    np.save(base / "spans.npy", np.zeros((rows, 2)))
    (base / "videos.json").write_text(json.dumps([(f"/lib/{i:08d}.mp4", 32.0) for i in range(count)]))
    (base / "manifest.json").write_text(json.dumps({"generation": "synthetic", "kind": "exact", "rows": rows,
                                                    "videos": count}))


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def percentiles(run: Callable[[np.ndarray], object], queries: np.ndarray) -> tuple[float, float]:
    times = []
    for query in queries:
        start = time.perf_counter()
        run(query[None])
        times.append((time.perf_counter() - start) * 1000)
    return tuple(np.percentile(times, [50, 99]))


def search_at_scale(sizes: list[int]) -> None:
    """Exact (memory-mapped scan) against faiss IVF-SQ8 re-scored exactly, on the same synthetic windows."""
    print(f"\n{'search, top 10 videos':22} {'windows':>11} {'exact p50/p99 ms':>17} {'ivf p50/p99 ms':>15} "
          f"{'x exact':>7} {'recall@10':>9} {'ivf build s':>11} {'ivf MB':>7} {'held MiB':>8} {'float32 MB':>10}")
    for rows in sizes:
        with tempfile.TemporaryDirectory() as tmp:  # TMPDIR: 20 GB free at 10M windows
            folder = Path(tmp)
            synthetic_search(folder, rows)
            exact = vectors.VectorSearch(folder)
            queries = exact.matrix[np.random.default_rng(1).choice(rows, 40, replace=False)] + \
                0.2 * np.random.default_rng(2).standard_normal((40, 512), dtype=np.float32)
            truth = exact.search(queries, 10)
            e50, e99 = percentiles(lambda q: exact.search(q, 10), queries[:5])
            start = time.perf_counter()
            vectors._write_ivf(folder / vectors.FOLDER / "ivf.faiss", exact.matrix)
            build = time.perf_counter() - start
            manifest = folder / vectors.FOLDER / "manifest.json"
            manifest.write_text(manifest.read_text().replace('"exact"', '"ivf"'))
            size = (folder / vectors.FOLDER / "ivf.faiss").stat().st_size / 1e6
            held = json.loads(subprocess.run([sys.executable, "-m", "client.bench", "search-memory", str(folder)],
                                             check=True, capture_output=True, text=True).stdout)["held_mib"]
            for nprobe in (None, 32):  # the default (lists holding ~SCAN windows), then few lists
                ivf = vectors.VectorSearch(folder, nprobe)
                found = ivf.search(queries, 10)
                recall = np.mean([len({m.video for m in f} & {m.video for m in t}) / 10
                                  for f, t in zip(found, truth)])
                a50, a99 = percentiles(lambda q: ivf.search(q, 10), queries)
                label, shown = f"nprobe {ivf.ann.nprobe}/{ivf.ann.nlist}", f"{held:8.0f}" if nprobe is None else ""
                print(f"  {label:20} {rows:11,} {e50:8.0f}/{e99:<8.0f} {a50:7.1f}/{a99:<7.1f} {e50 / a50:7.1f} "
                      f"{recall:9.3f} {build:11.0f} {size:7.0f} {shown:>8} {rows * 512 * 4 / 1e6:10.0f}")


def search_memory(folder: Path) -> None:
    """In a fresh process (a bench's own heap would hide it): the anonymous memory a search process holds once
    it has loaded a search structure and answered; the memory-mapped matrix is not counted (file pages)."""
    before = status_mib("RssAnon")
    structure = vectors.VectorSearch(folder)
    structure.search(np.asarray(structure.matrix[:10]), 10)
    print(json.dumps({"held_mib": status_mib("RssAnon") - before}))


def whole_video(session: Session, path: str, sampling: Sampling) -> int:
    """How `index` embedded a video before streaming: every window in memory at once, then the requests."""
    frames, _ = load(path, sampling)
    return len(session.embed_windows(frames))


def streamed(session: Session, path: str, sampling: Sampling) -> int:
    """How `index` embeds a video now (`client.library.stream`)."""
    [(_, done)] = embed_stream(session, [path], str, sampling)
    return len(done.embeddings)


def video_memory(address: str, path: str, frames: int, size: int, how: str) -> None:
    release_big_blocks()  # as the CLI does, for both ways
    sampling = Sampling(frames=frames, size=size, stride=frames / FPS)
    with Session(Options(address=address, timeout=600)) as session:
        start = time.perf_counter()
        windows = (whole_video if how == "whole" else streamed)(session, path, sampling)
        seconds = time.perf_counter() - start
    # VmHWM starts afresh at exec; ru_maxrss would carry the forking parent's peak over (Linux)
    peak_mb = status_mib("VmHWM")
    print(json.dumps({"windows": windows, "seconds": seconds, "peak_mb": peak_mb}))


def main() -> None:
    if sys.argv[1:2] == ["video-memory"]:
        address, path, frames, size, how = sys.argv[2:]
        return video_memory(address, path, int(frames), int(size), how)
    if sys.argv[1:2] == ["search-memory"]:
        return search_memory(Path(sys.argv[2]))
    if sys.argv[1:2] == ["search"]:  # python -m client.bench search [ROWS...]: only the search figures
        return search_at_scale([int(n) for n in sys.argv[2:]] or SEARCH_SIZES)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        preprocessing([str(p) for p in synthetic_clips(folder) + real_clips(folder)])
    requests()
    imports()
    search_at_scale(SEARCH_SIZES)


if __name__ == "__main__":
    main()
