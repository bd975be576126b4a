"""Client figures measured in one run, printed side by side as ratios (`make bench`).

- preprocessing: ms per clip, ours (colab and segments sampling) against a colab-style loader on the same files;
- requests: build + encode time and bytes of uint8 against float32 frames;
- import: `import client.cli` against `import tensorflow_serving.apis` (fresh processes);
- search: ranking latency over 10k, 100k and 1M synthetic window embeddings.

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
from client.library.rank import Windows, rank
from client.decode.samples import real_clips, synthetic_clips
from client.transport.tensors import to_proto
from client.decode.video import Sampling, load
from client.library.stream import embed_stream
from client.memory import release_big_blocks
from client.transport.session import Options, Session


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


def search_latency() -> None:
    rng = np.random.default_rng(0)
    query = rng.normal(size=(1, 512)).astype(np.float32)
    print(f"\n{'search, 1 query, top 10':34} {'windows':>12} {'ms':>11} {'x 10k':>6}")
    base = None
    for n in (10_000, 100_000, 1_000_000):
        videos = n // 10
        windows = Windows([f"v{i}" for i in range(videos)], rng.standard_normal((n, 512), dtype=np.float32),
                          np.repeat(np.arange(videos), 10), np.zeros((n, 2)))
        ms = best_of(lambda: rank(query, windows, 10)) * 1000
        base = base or ms
        print(f"  {'':32} {n:12,} {ms:11.1f} {ms / base:6.1f}")
        del windows


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
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    peak_mb = peak_kb / 1024
    print(json.dumps({"windows": windows, "seconds": seconds, "peak_mb": peak_mb}))


def main() -> None:
    if sys.argv[1:2] == ["video-memory"]:
        address, path, frames, size, how = sys.argv[2:]
        return video_memory(address, path, int(frames), int(size), how)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        preprocessing([str(p) for p in synthetic_clips(folder) + real_clips(folder)])
    requests()
    imports()
    search_latency()


if __name__ == "__main__":
    main()
