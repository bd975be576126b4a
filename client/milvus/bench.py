"""Milvus figures for `make bench`, beside the folder index's on the same synthetic windows, and the capacity
arithmetic for Milvus Distributed.

Measured here on Milvus Lite (a `.db` file, pure Python, FLAT: exact), which is a stand-in with Milvus's API, not
the distributed engine: its figures show the store answers correctly (recall@10 against the folder's exact scan)
and what a laptop gets, not what a Milvus cluster does. `python -m s3d_retrieval.client.milvus.bench [ROWS...]`.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from s3d_retrieval.client.bench import (approximate, percentiles, sentence_queries, synthetic_parts,
                                        synthetic_search, synthetic_windows)
from s3d_retrieval.client.decode.video import Sampling
from s3d_retrieval.client.library import vectors
from s3d_retrieval.client.library.store import Entry
from s3d_retrieval.client.milvus.view import MilvusView
from s3d_retrieval.client.milvus.store import MilvusStore

SIZES = [100_000, 1_000_000]
QUERIES = 8
VIDEOS_PER_COMMIT = 200
DIMENSION, FLOAT32 = 512, 4
NODE_GB = 64  # a query node's memory (serving/k8s/overlays/milvus/values.yaml)
HNSW_M = 18  # the graph's degree AUTOINDEX builds with
SCALARS = 8 + 100 + 32 + 3 * 8  # bytes a window of id, path (~100), token and three doubles


def fill(store: MilvusStore, matrix: np.ndarray) -> float:
    """Commit `matrix`'s rows as videos of `PER_VIDEO` windows, then seal them; windows per second."""
    parts = synthetic_parts(matrix, "base")
    start = time.perf_counter()
    for first in range(0, len(parts.videos), VIDEOS_PER_COMMIT):
        chosen = range(first, min(first + VIDEOS_PER_COMMIT, len(parts.videos)))
        rows = [parts.rows(v) for v in chosen]
        spans = [np.stack([np.arange(len(e)) * 3.2, np.arange(len(e)) * 3.2 + 3.2], axis=1) for e, _ in rows]
        store.commit([Entry(parts.videos[v][0], "synthetic", 1, 0.0, 1, parts.videos[v][1], "", 0, 0) for v in chosen],
                     [np.asarray(e) for e, _ in rows], spans)
    store.refresh_search()
    return len(matrix) / (time.perf_counter() - start)


def lite_against_folder(sizes: list[int]) -> None:
    print(f"\n{'Milvus Lite, top 10':22} {'windows':>11} {'insert win/s':>12} {'Lite p50/p99 ms':>16} "
          f"{'exact p50 ms':>12} {'ivf p50 ms':>10} {'x exact':>7} {'recall@10 vs exact':>18}")
    for rows in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            synthetic_windows(folder / "base.npy", rows, seed=1)
            synthetic_search(folder, folder / "base.npy", rows)
            exact = vectors.VectorSearch(folder)
            matrix = exact.segments[0].matrix
            targets = np.asarray(matrix[np.random.default_rng(1).choice(rows, QUERIES, replace=False)])
            queries = sentence_queries(targets, np.random.default_rng(3))
            truth = exact.search(queries, 10)
            e50, _ = percentiles(lambda q: exact.search(q, 10), queries)
            approximate(folder)
            ivf = vectors.VectorSearch(folder)
            a50, _ = percentiles(lambda q: ivf.search(q, 10), queries)
            with MilvusStore(str(folder / "lite.db"), "bench", "bench", Sampling(), create=True) as store:
                rate = fill(store, matrix)
                view = MilvusView(store)
                m50, m99 = percentiles(lambda q: view.search(q, 10), queries)
                found = view.search(queries, 10)
            recall = np.mean([len({m.video for m in f} & {m.video for m in t}) / 10 for f, t in zip(found, truth)])
            print(f"  {'FLAT (exact)':20} {rows:11,} {rate:12,.0f} {m50:7.0f}/{m99:<8.0f} {e50:12.1f} {a50:10.1f} "
                  f"{m50 / e50:7.1f} {recall:18.3f}")


def sizing(windows: int) -> tuple[tuple[float, float, float], list[int]]:
    """GB in query nodes' memory for HNSW, IVF_SQ8 and DiskANN, and the query nodes of `NODE_GB` holding them."""
    raw = windows * DIMENSION * FLOAT32 / 1e9
    fields = windows * SCALARS / 1e9  # loaded beside the vectors whatever the index
    memory = (raw + windows * HNSW_M * 2 * 4 / 1e9 + fields,  # HNSW: 2M neighbour ids of 4 bytes a vector
              windows * DIMENSION / 1e9 + fields,  # IVF_SQ8: a byte a dimension
              raw / 8 + fields)  # DiskANN: compressed vectors in memory, the graph and full vectors on NVMe
    return memory, [int(np.ceil(m / (NODE_GB * 0.7))) for m in memory]  # 70% of a node's memory for segments


def capacity() -> None:
    """What Milvus Distributed needs to hold 100M and 1B windows (docs/how-to/milvus.md sizing: 100,000 hours are 112.5M
    windows of the released model), for the index types that matter at that size: HNSW (float32 vectors and a
    graph in memory; what AUTOINDEX gives on open-source Milvus, the store's choice), IVF_SQ8 (8-bit codes in
    memory, ~4x less) and DiskANN (vectors on NVMe, ~1/8 in memory), and the query nodes holding them."""
    print(f"\n{'Milvus Distributed':22} {'windows':>13} {'raw float32 GB':>14} {'memory GB HNSW/IVF_SQ8/DiskANN':>31} "
          f"{'query nodes of 64 GB, same order':>33}")
    for windows in (100_000_000, 1_000_000_000):
        raw = windows * DIMENSION * FLOAT32 / 1e9
        memory, nodes = sizing(windows)
        print(f"  {'':20} {windows:13,} {raw:14,.0f} {'/'.join(f'{m:,.0f}' for m in memory):>31} "
              f"{'/'.join(map(str, nodes)):>33}")


def main() -> None:
    lite_against_folder([int(n) for n in sys.argv[1:]] or SIZES)
    capacity()


if __name__ == "__main__":
    main()
