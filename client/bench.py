"""Client figures measured in one run, printed side by side as ratios (`make bench`).

- preprocessing: ms per clip, ours (colab and segments sampling) against a colab-style loader on the same files;
- requests: build + encode time and bytes of uint8 against float32 frames;
- import: `import s3d_retrieval.client.cli` against `import tensorflow_serving.apis` (fresh processes);
- search at scale: 1M and 10M synthetic windows (20 GB of float32 at 10M, written under TMPDIR),
  exact memory-mapped scan against faiss IVF-SQ8, latency, recall@10 of faiss against exact for queries near a
  window and queries shaped like sentences, training time, memory; then growth: an update by 1% of the rows and by
  one video against training and coding every row, and recall after +20% and +50% rows on the first lists
  against lists trained afresh.

`python -m client.bench video-memory ADDRESS VIDEO FRAMES SIZE {whole,streamed}` is one side of the served
bench's indexing-memory figures: it embeds one video in this fresh process and prints its peak RSS (JSON).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from s3d_retrieval.client.transport import protos
from s3d_retrieval.client.defaults import FPS, FRAMES, MODEL_NAME, SIZE
from s3d_retrieval.client.library import vectors
from s3d_retrieval.client.decode.samples import real_clips, synthetic_clips
from s3d_retrieval.client.transport.tensors import to_proto
from s3d_retrieval.client.decode.video import Sampling, VideoError, load
from s3d_retrieval.client.library.stream import embed_stream
from s3d_retrieval.client.memory import release_big_blocks
from s3d_retrieval.client.transport.session import Options, Pinned, Session


SEARCH_SIZES = [1_000_000, 10_000_000]


def colab_loader(path: str, max_frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """A loader written like the official colab's: read frames, crop the centre square, resize, BGR->RGB,
    repeat when short, divide by 255 (float64). The baseline our `colab` sampling must match."""
    cap = cv2.VideoCapture(path)
    read: list[np.ndarray] = []
    while len(read) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        y, x = frame.shape[:2]
        m = min(y, x)
        sy, sx = y // 2 - m // 2, x // 2 - m // 2
        read.append(cv2.resize(frame[sy:sy + m, sx:sx + m], (size, size))[:, :, [2, 1, 0]])
    cap.release()
    frames = np.array(read)
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

    ours, official = seconds("s3d_retrieval.client.cli"), seconds("tensorflow_serving.apis.prediction_service_pb2_grpc")
    if ours is None:
        raise SystemExit("error: s3d_retrieval.client.cli does not import; run `make setup`")
    print(f"\n{'import, s (fresh process)':34} {'client.cli':>12} {'tf_serving':>11} {'ratio':>6}")
    if official is None:
        print(f"  {'':32} {ours:12.2f} {'(absent)':>11}")
    else:
        print(f"  {'':32} {ours:12.2f} {official:11.2f} {official / ours:6.1f}")


# How sentences sit against windows in a trained model's space, measured on the demo model's held-out set by
# `model.bench` (its last line in `make bench`): a sentence's cosine with its video's best window (median), and the
# mean cosine between two sentences (the offset they share: the text and video towers meet only loosely).
BEST_COSINE, SENTENCE_COSINE = 0.49, 0.29
PER_VIDEO = 10  # synthetic windows per video


def synthetic_windows(path: Path, rows: int, seed: int, dim: int = 512) -> np.memmap:
    """`rows` synthetic windows in a memory-mapped .npy, in 1M-row chunks: topics, videos near a topic, windows
    near their video, unit length, as real embeddings cluster. Every seed draws from the same 1,024 topics."""
    topics = np.random.default_rng(0).standard_normal((1024, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    matrix = np.lib.format.open_memmap(path, "w+", np.float32, (rows, dim))
    for start in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - start)
        videos = topics[rng.integers(0, len(topics), n // PER_VIDEO + 1)]
        videos += 0.6 * rng.standard_normal(videos.shape, dtype=np.float32)
        chunk = np.repeat(videos, PER_VIDEO, axis=0)[:n] + 0.4 * rng.standard_normal((n, dim), dtype=np.float32)
        matrix[start: start + n] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    matrix.flush()
    return np.load(path, mmap_mode="r")


def synthetic_parts(matrix: np.ndarray, name: str) -> vectors.Parts:
    """`matrix`'s rows as videos of `PER_VIDEO` windows (the last one shorter)."""
    count = -(-len(matrix) // PER_VIDEO)
    spans = np.zeros((PER_VIDEO, 2))

    def rows(v: int) -> tuple[np.ndarray, np.ndarray]:
        block = matrix[v * PER_VIDEO: (v + 1) * PER_VIDEO]
        return block, spans[:len(block)]

    return vectors.Parts([(f"/lib/{name}/{i:08d}.mp4", 32.0) for i in range(count)], rows,
                         [min(PER_VIDEO, len(matrix) - v * PER_VIDEO) for v in range(count)],
                         [f"{name}:{i}" for i in range(count)])


def synthetic_search(folder: Path, matrix_path: Path, rows: int) -> None:
    """An exact `search/` structure whose one segment's matrix is `matrix_path` itself (moved in, not copied)."""
    base = folder / vectors.FOLDER
    segment = base / "s-synthetic"
    segment.mkdir(parents=True)
    matrix_path.rename(segment / "embeddings.npy")
    parts = synthetic_parts(np.load(segment / "embeddings.npy", mmap_mode="r"), "base")
    np.save(segment / "first.npy", np.cumsum([0, *parts.counts]).astype(np.int64))
    np.save(segment / "spans.npy", np.zeros((rows, 2)))
    assert parts.placements is not None  # synthetic_parts names every video's placement
    listed = [[p, d, k] for (p, d), k in zip(parts.videos, parts.placements)]
    (segment / "videos.json").write_text(json.dumps(listed))
    vectors.write_manifest(base, "synthetic", "exact", [{"name": segment.name, "rows": rows,
                                                         "videos": len(parts.videos), "dead": None}], 0, None)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def sentence_queries(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Queries shaped like sentences: cosine `BEST_COSINE` with a target window; the rest is a direction shared by
    every query (the modality offset) and noise, weighted so that two queries meet at ~`SENTENCE_COSINE`."""
    offset = unit(rng.standard_normal((targets.shape[1],)).astype(np.float32))
    share = math.sqrt(SENTENCE_COSINE / (1 - BEST_COSINE ** 2))
    rest = offset * share + unit(rng.standard_normal(targets.shape).astype(np.float32)) * math.sqrt(1 - share ** 2)
    rest = unit(rest - (rest * targets).sum(axis=1, keepdims=True) * targets)  # orthogonal to the target
    return (targets * BEST_COSINE + rest * math.sqrt(1 - BEST_COSINE ** 2)).astype(np.float32)


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


def recall_at_10(structure: vectors.VectorSearch, queries: np.ndarray, truth: list) -> float:
    found = structure.search(queries, 10)
    return float(np.mean([len({m.video for m in f} & {m.video for m in t}) / 10 for f, t in zip(found, truth)]))


def search_at_scale(sizes: list[int]) -> None:
    """Exact (memory-mapped scan) against faiss IVF-SQ8 re-scored exactly, on the same synthetic windows, for
    queries near a window and queries shaped like sentences; then growth: what an update costs against a full
    build, and recall after 20% more rows without training again against a structure trained afresh."""
    print(f"\n{'search, top 10 videos':22} {'windows':>11} {'exact p50/p99 ms':>17} {'ivf p50/p99 ms':>15} "
          f"{'x exact':>7} {'recall@10 near/sentence':>23} {'train+codes s':>13} {'ivf MB':>7} {'held MiB':>8} "
          f"{'float32 MB':>10}")
    growth = []
    for rows in sizes:
        with tempfile.TemporaryDirectory() as tmp:  # TMPDIR: ~30 GB free at 10M windows
            folder = Path(tmp)
            synthetic_windows(folder / "base.npy", rows, seed=1)
            synthetic_search(folder, folder / "base.npy", rows)
            exact = vectors.VectorSearch(folder)
            matrix = exact.segments[0].matrix
            targets = np.asarray(matrix[np.random.default_rng(1).choice(rows, 40, replace=False)])
            shapes = {"near": targets + 0.2 * np.random.default_rng(2).standard_normal((40, 512), dtype=np.float32),
                      "sentence": sentence_queries(targets, np.random.default_rng(3))}
            truth = {name: exact.search(q, 10) for name, q in shapes.items()}
            e50, e99 = percentiles(lambda q: exact.search(q, 10), shapes["sentence"][:5])
            start = time.perf_counter()
            approximate(folder)
            build = time.perf_counter() - start
            segment = folder / vectors.FOLDER / "s-synthetic"
            size = ((segment / "ivf.faiss").stat().st_size) / 1e6
            held = json.loads(subprocess.run([sys.executable, "-m", "s3d_retrieval.client.bench", "search-memory", str(folder)],
                                             check=True, capture_output=True, text=True).stdout)["held_mib"]
            for nprobe in (None, 32):  # the default (lists holding ~SCAN windows), then few lists
                ivf = vectors.VectorSearch(folder, nprobe)
                recalls = [recall_at_10(ivf, shapes[name], truth[name]) for name in ("near", "sentence")]
                a50, a99 = percentiles(lambda q: ivf.search(q, 10), shapes["sentence"])
                first = ivf.segments[0]
                label, shown = f"nprobe {first.nprobe}/{first.ann.nlist}", f"{held:8.0f}" if nprobe is None else ""
                print(f"  {label:20} {rows:11,} {e50:8.0f}/{e99:<8.0f} {a50:7.1f}/{a99:<7.1f} {e50 / a50:7.1f} "
                      f"{recalls[0]:11.3f}/{recalls[1]:<11.3f} {build:13.0f} {size:7.0f} {shown:>8} "
                      f"{rows * 512 * 4 / 1e6:10.0f}")
            growth.append(grow(folder, rows, build, shapes))
    print(f"\n{'growth, ivf':22} {'windows':>11} {'train+codes s':>13} {'+1% rows s':>10} {'ratio':>6} "
          f"{'+1 video s':>10} {'+20% kept lists':>17} {'+20% afresh':>17} {'+50% kept lists':>17}   "
          f"(recall@10 near/sentence)")
    for line in growth:
        print(line)


def built(folder: Path) -> dict:
    """The manifest of the structure the bench built at `folder`."""
    manifest = vectors.read_manifest(folder)
    assert manifest is not None, f"{folder}: no search structure built"
    return manifest


def approximate(folder: Path) -> None:
    """Train the structure at `folder` afresh as IVF-SQ8, in place: lists trained on a sample of every segment's
    rows, each segment's codes written again. A full build's work, without copying the matrices."""
    base = folder / vectors.FOLDER
    manifest = built(folder)
    matrices = [np.load(base / s["name"] / "embeddings.npy", mmap_mode="r") for s in manifest["segments"]]
    rows = sum(len(m) for m in matrices)
    lists = vectors.ivf_lists(rows)
    rng = np.random.default_rng(0)
    share = min(1.0, max(lists * 39, 65_536) / rows)
    sample = np.concatenate([m[np.sort(rng.choice(len(m), max(1, round(share * len(m))), replace=False))]
                             for m in matrices])
    trained = vectors._train_ivf(sample, lists)
    name = manifest.get("trained") or "trained-bench.faiss"
    vectors._write_faiss(base / name, trained)
    for segment, matrix in zip(manifest["segments"], matrices):
        vectors._write_faiss(base / segment["name"] / "ivf.faiss", vectors._codes(trained, matrix))
    vectors.write_manifest(base, manifest["generation"], "ivf", manifest["segments"], rows, name)


def grow(folder: Path, rows: int, build: float, shapes: dict[str, np.ndarray]) -> str:
    """Updates of the IVF structure at `folder` by new videos: 1% of the rows, one video, then up to +20% and
    +50% (`RETRAIN_SHARE`); recall on the lists trained at first, and at +20% on lists trained afresh."""
    extra = synthetic_windows(folder / "extra.npy", rows // 2, seed=2)
    cuts = [0, rows // 100, rows // 100 + 10, rows // 5, rows // 2]
    times, recalls = [], {}
    for step, (start, end) in enumerate(zip(cuts[:-1], cuts[1:])):
        clock = time.perf_counter()
        vectors.update(folder, built(folder), f"grown-{step}", synthetic_parts(extra[start:end],
                                                                                             f"grown{step}"), {})
        times.append(time.perf_counter() - clock)
        if end in (rows // 5, rows // 2):
            truth = {n: vectors.VectorSearch(folder, kind="exact").search(q, 10) for n, q in shapes.items()}
            recalls[end] = [recall_at_10(vectors.VectorSearch(folder), shapes[n], truth[n]) for n in shapes]
        if end == rows // 5:  # the same rows on lists trained afresh; then back to the first lists
            base = folder / vectors.FOLDER
            trained = base / built(folder)["trained"]
            kept = {p: p.with_name(p.name + ".kept") for p in [trained, *base.glob("s-*/ivf.faiss")]}
            for path, copy in kept.items():
                shutil.copyfile(path, copy)
            approximate(folder)
            afresh = [recall_at_10(vectors.VectorSearch(folder), shapes[n], truth[n]) for n in shapes]
            for path, copy in kept.items():
                os.replace(copy, path)
            vectors.write_manifest(base, "kept", "ivf", built(folder)["segments"], rows, trained.name)
    shown = lambda pair: f"{pair[0]:.3f}/{pair[1]:.3f}"  # noqa: E731
    return (f"  {'':20} {rows:11,} {build:13.0f} {times[0]:10.1f} {times[0] / build:6.3f} {times[1]:10.2f} "
            f"{shown(recalls[rows // 5]):>17} {shown(afresh):>17} {shown(recalls[rows // 2]):>17}")


def search_memory(folder: Path) -> None:
    """In a fresh process (a bench's own heap would hide it): the anonymous memory a search process holds once
    it has loaded a search structure and answered; the memory-mapped matrix is not counted (file pages)."""
    before = status_mib("RssAnon")
    structure = vectors.VectorSearch(folder)
    structure.search(np.asarray(structure.segments[0].matrix[:10]), 10)
    print(json.dumps({"held_mib": status_mib("RssAnon") - before}))


def whole_video(session: Pinned, path: str, sampling: Sampling) -> int:
    """How `index` embedded a video before streaming: every window in memory at once, then the requests."""
    frames, _ = load(path, sampling)
    return len(session.embed_windows(frames))


def streamed(session: Pinned, path: str, sampling: Sampling) -> int:
    """How `index` embeds a video now (`client.library.stream`)."""
    [(_, done)] = embed_stream(session, [path], str, sampling)
    if isinstance(done, VideoError):
        raise done
    return len(done.embeddings)


def video_memory(address: str, path: str, frames: int, size: int, how: str) -> None:
    release_big_blocks()  # as the CLI does, for both ways
    sampling = Sampling(frames=frames, size=size, stride=frames / FPS)
    with Session(Options(address=address, timeout=600)) as served:
        session = Pinned(served, served.default_version())
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
