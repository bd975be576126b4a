"""Search at scale: an index's windows as one memory-mapped matrix, with a faiss index beside it when large.

`search/` inside the index folder (built in a temporary folder, then renamed into place; rebuilt when missing
or stale, i.e. when the index's entries changed since: its generation counter moved):
- `manifest.json`: the index generation it was built from, the kind (`exact` or `ivf`), rows and videos;
- `videos.json` ([path, duration, placement] by video number: the placement names the shard rows the video's
  windows came from, so a reader can tell which videos still hold), `first.npy` (each video's first row, then
  the row count),
  `spans.npy` ([rows, 2] seconds), `embeddings.npy` ([rows, D] float32): memory-mapped, never loaded whole;
- `ivf.faiss` (approximate only): an inverted file of 8-bit scalar-quantized vectors (faiss IVF-SQ8: a quarter
  of the float32 bytes, in memory). Product quantization (IVF-PQ) was weighed: 4-16x smaller still, but its
  codes ranked the right videos too low for recall@10 >= 0.95 after re-scoring (0.74-0.82 against 0.94 for SQ8
  at the same lists probed, on clustered synthetic windows), and its codebooks took minutes to train.

Exact search scans the memory-mapped matrix in chunks: each video's best window, exactly. Approximate search
ranks on faiss's own SQ8 scores (candidate windows, the best per video) and re-scores exactly, from the matrix,
only the best windows of the `RESCORE` x `top` leading videos: a few rows read per query, so the 20 GB matrix of
10M windows need not sit in the page cache. It widens the candidate list until `top` distinct videos are found
(or every allowed window was a candidate), so filters never return too few. Approximate is chosen above
`EXACT_LIMIT` windows; a writer's `kind` overrides. Readers choose how to search in memory (`VectorSearch`'s
`kind`: an exact scan of an approximate structure's matrix, or an inverted file trained in memory on an exact
one) and never write here.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.library.rank import Match

EXACT_LIMIT = 250_000  # windows: above, an exact scan costs more than ~50 ms a query on 2 cores
CHUNK = 262_144  # rows scored at once by the exact scan (512 MB of float32 at most)
CANDIDATES = 64  # approximate: windows fetched per wanted video, doubled until enough videos
RESCORE = 2  # approximate: videos re-scored exactly per wanted video
SCAN = 262_144  # approximate: windows whose codes are scanned per query by default (~25 ms on 2 cores)
FOLDER = "search"


def ivf_lists(rows: int) -> int:
    """Coarse clusters: ~sqrt(rows) as a power of two (2,048 at 10M windows), at least 39 windows each to
    train on (faiss's minimum)."""
    return 2 ** int(np.log2(max(1.0, min(np.sqrt(rows), rows / 39))))


@dataclass
class Parts:
    """What a search structure is built from: per video, its path, duration and windows."""

    videos: list[tuple[str, float]]
    rows: Callable[[int], tuple[np.ndarray, np.ndarray]]  # video number -> (embeddings [W, D], spans [W, 2])
    counts: list[int]
    placements: list[str] | None = None  # per video: where its windows are stored in the index


def build(folder: Path, parts: Parts, generation: str, kind: str | None = None) -> None:
    """Write `folder/search` afresh (temporary folder, then rename)."""
    rows = sum(parts.counts)
    kind = kind or ("exact" if rows <= EXACT_LIMIT else "ivf")
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.", dir=folder))
    try:
        first = np.cumsum([0, *parts.counts]).astype(np.int64)
        dim = next((parts.rows(v)[0].shape[1] for v, n in enumerate(parts.counts) if n), 512)
        matrix = np.lib.format.open_memmap(tmp / "embeddings.npy", "w+", np.float32, (rows, dim))
        spans = np.lib.format.open_memmap(tmp / "spans.npy", "w+", np.float64, (rows, 2))
        for video, count in enumerate(parts.counts):
            embeddings, times = parts.rows(video)
            matrix[first[video]: first[video] + count] = embeddings
            spans[first[video]: first[video] + count] = times
        matrix.flush()
        spans.flush()
        np.save(tmp / "first.npy", first)
        placements = parts.placements or [""] * len(parts.videos)
        (tmp / "videos.json").write_text(json.dumps([[p, d, k] for (p, d), k in zip(parts.videos, placements)]))
        if kind == "ivf":
            _write_ivf(tmp / "ivf.faiss", np.load(tmp / "embeddings.npy", mmap_mode="r"))
        (tmp / "manifest.json").write_text(json.dumps({"generation": generation, "kind": kind, "rows": rows,
                                                       "videos": len(parts.videos)}))
        old = folder / FOLDER
        if old.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.old.", dir=folder))
            os.replace(old, retired / FOLDER)
            os.replace(tmp, old)
            shutil.rmtree(retired)
        else:
            os.replace(tmp, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_ivf(path: Path, matrix: np.ndarray) -> None:
    import faiss

    faiss.write_index(_train_ivf(matrix), str(path))


def _train_ivf(matrix: np.ndarray):
    """An IVF-SQ8 inverted file over every row of `matrix` (memory-mapped: read in chunks)."""
    import faiss

    rows, dim = matrix.shape
    lists = ivf_lists(rows)
    index = faiss.index_factory(dim, f"IVF{lists},SQ8", faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10  # k-means iterations of the coarse quantizer: enough for lists of this size
    sample = np.random.default_rng(0).choice(rows, size=min(rows, max(lists * 39, 65_536)), replace=False)
    index.train(np.ascontiguousarray(matrix[np.sort(sample)]))
    for start in range(0, rows, CHUNK):
        index.add(np.ascontiguousarray(matrix[start: start + CHUNK]))
    return index


def read_manifest(folder: Path) -> dict | None:
    """The built structure's manifest, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((folder / FOLDER / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


class VectorSearch:
    """A built `search/` folder, memory-mapped; answers top videos per query."""

    def __init__(self, folder: Path, nprobe: int | None = None, kind: str | None = None):
        """`nprobe`: inverted lists searched. By default as many as hold ~`SCAN` windows: the cost of a query is
        the codes it scans, so it stays flat as the library grows, while recall grows with it (lists get purer:
        recall@10 0.978 at 1M synthetic windows, 134 of 512 lists; 0.997 at 10M, 54 of 2,048). More are probed
        when a filter leaves too few candidates. `kind`: how to search (default: as built), in memory only.
        Raises OSError or ValueError when the folder is missing or being replaced (read again)."""
        base = folder / FOLDER
        self.manifest = json.loads((base / "manifest.json").read_text())
        listed = json.loads((base / "videos.json").read_text())
        self.videos = [(v[0], v[1]) for v in listed]
        self.placements = [v[2] if len(v) > 2 else "" for v in listed]
        self.first = np.load(base / "first.npy")
        self.matrix = np.load(base / "embeddings.npy", mmap_mode="r")
        self.spans = np.load(base / "spans.npy", mmap_mode="r")
        self.owner_of = lambda rows: np.searchsorted(self.first, rows, side="right") - 1
        self.kind = kind or self.manifest["kind"]
        self.ann = None
        if self.kind == "ivf" and len(self.matrix):
            import faiss

            built = self.manifest["kind"] == "ivf"
            self.ann = faiss.read_index(str(base / "ivf.faiss")) if built else _train_ivf(self.matrix)
            self.ann.nprobe = min(self.ann.nlist, nprobe or max(1, round(SCAN * self.ann.nlist / self.ann.ntotal)))

    def allowed_rows(self, videos: np.ndarray | None) -> np.ndarray | None:
        """Boolean mask of the rows of the allowed video numbers (None: all)."""
        if videos is None:
            return None
        keep = np.zeros(len(self.videos), bool)
        keep[videos] = True
        return np.repeat(keep, np.diff(self.first))

    def search(self, queries: np.ndarray, top: int, videos: np.ndarray | None = None) -> list[list[Match]]:
        """For each query, the `top` videos (of `videos`, video numbers; None: all) by their best window."""
        if not len(self.matrix):
            return [[] for _ in queries]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        mask = self.allowed_rows(videos)
        if self.ann is None:
            return self._exact(queries, top, mask)
        return [self._approximate(q, top, mask) for q in queries]

    def _best_rows(self, rows: np.ndarray, scores: np.ndarray, limit: int) -> np.ndarray:
        """Of `rows` (scored by `scores`), the best row of each video, for the `limit` best videos, best first."""
        order = np.argsort(-scores, kind="stable")
        _, firsts = np.unique(self.owner_of(rows[order]), return_index=True)
        return rows[order[np.sort(firsts)[:limit]]]

    def _matches(self, rows: np.ndarray, scores: np.ndarray) -> list[Match]:
        """One match per row (each of another video), best score first."""
        order = np.argsort(-scores, kind="stable")
        matches = []
        for row, score in zip(rows[order], scores[order]):
            start, end = self.spans[row]
            matches.append(Match(self.videos[int(self.owner_of(row))][0], float(score), float(start), float(end)))
        return matches

    def _exact(self, queries: np.ndarray, top: int, mask: np.ndarray | None) -> list[list[Match]]:
        """Every video's best window for every query, from one chunked scan of the memory-mapped matrix (the
        matrix is read once however many queries); then the top videos."""
        best = np.full((len(queries), len(self.videos)), -np.inf, np.float32)
        best_row = np.zeros((len(queries), len(self.videos)), np.int64)
        for start in range(0, len(self.matrix), CHUNK):
            block = np.asarray(self.matrix[start: start + CHUNK]) @ queries.T  # [rows, Q]
            end = start + len(block)
            if mask is not None:
                block[~mask[start:end]] = -np.inf
            cuts = np.unique(np.r_[start, self.first[(self.first > start) & (self.first < end)]]) - start
            lengths = np.diff(np.r_[cuts, len(block)])
            seg_videos = self.owner_of(cuts + start)
            for q, scores in enumerate(block.T):
                seg_best = np.maximum.reduceat(scores, cuts)
                hits = np.flatnonzero(scores == np.repeat(seg_best, lengths))
                _, firsts = np.unique(np.searchsorted(cuts, hits, side="right") - 1, return_index=True)
                better = seg_best > best[q, seg_videos]
                best[q, seg_videos[better]] = seg_best[better]
                best_row[q, seg_videos[better]] = hits[firsts][better] + start
        results = []
        for q in range(len(queries)):
            found = np.flatnonzero(np.isfinite(best[q]))
            chosen = found[np.argsort(-best[q, found], kind="stable")[:top]]
            results.append(self._matches(best_row[q, chosen], best[q, chosen]))
        return results

    def _approximate(self, query: np.ndarray, top: int, mask: np.ndarray | None) -> list[Match]:
        """faiss candidates ranked on their SQ8 scores, the leading videos' best windows re-scored exactly; more
        candidates (and lists probed) until `top` videos are found, else an exact scan of the allowed rows: a
        filter never returns fewer videos than it allows."""
        import faiss

        allowed = len(self.matrix) if mask is None else int(mask.sum())
        sel = None
        if mask is not None:
            bitmap = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        if not allowed:
            return []
        k, nprobe = min(allowed, top * CANDIDATES), self.ann.nprobe
        while True:
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
            scores, found = self.ann.search(query[None], k, params=params)
            keep = found[0] >= 0
            got = int(keep.sum())
            best = self._best_rows(found[0][keep], scores[0][keep], top * RESCORE)
            if len(best) >= top or got == allowed:
                best = np.sort(best)
                return self._matches(best, np.asarray(self.matrix[best]) @ query)[:top]
            if got == k:
                k = min(allowed, k * 2)
            elif nprobe < self.ann.nlist:  # the probed lists ran out: probe more
                nprobe = min(self.ann.nlist, nprobe * 2)
            else:
                return self._exact(query[None], top, mask)[0]
