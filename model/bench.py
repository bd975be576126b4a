"""Model figures, measured in one run: stand-in write time and size, and forward-pass cost by clip size.

`python -m model.bench` (or `make bench`). Prints a table; ratios are against the 8x64x64 test clip.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub

from client.files import folder_bytes
from model.standin import write_standin

CLIPS = ((8, 64, 64), (16, 224, 224), (32, 224, 224))


def _seconds(fn, repeat: int) -> float:
    fn()  # warm-up: graph optimisation and allocation happen on the first call
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    tf.get_logger().setLevel("ERROR")  # TF1 API deprecation notices from the module writer
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'module':8} {'write s':>8} {'size MB':>8}")
        paths = {}
        for size in ("tiny", "full"):
            start = time.perf_counter()
            paths[size] = write_standin(Path(tmp) / size, size)
            mb = folder_bytes(paths[size]) / 1e6
            print(f"{size:8} {time.perf_counter() - start:8.1f} {mb:8.1f}")
        print(f"\n{'module':8} {'clip TxHxW':>12} {'forward ms':>11} {'x 8x64x64':>10}   (batch 1, CPU)")
        for size, path in paths.items():
            video = hub.load(str(path)).signatures["video"]
            base = None
            for t, h, w in CLIPS:
                clip = tf.random.uniform([1, t, h, w, 3])
                ms = 1000 * _seconds(lambda: video(clip), repeat=5 if t * h < 1000 else 3)
                base = base or ms
                print(f"{size:8} {f'{t}x{h}x{w}':>12} {ms:11.1f} {ms / base:10.1f}")


if __name__ == "__main__":
    main()
