"""Search at scale: an index's windows as memory-mapped matrices, with faiss inverted files beside them when large.

`search/` inside the index folder, written only by a writer holding the index's lock:
- `manifest.json` (replaced atomically): the index generation it holds, the kind (`exact` or `ivf`), rows and
  videos, the rows the inverted file was trained on, and its **segments**, each with its removed videos;
- `trained-*.faiss` (approximate only; named in the manifest): the trained, empty inverted file every segment's
  codes come from;
- one folder per segment: `videos.json` ([path, duration, placement] by video number: the placement names the
  shard rows the video's windows came from, so a reader can tell which videos still hold), `first.npy` (each
  video's first row, then the row count), `spans.npy` ([rows, 2] seconds), `embeddings.npy` ([rows, D] float32):
  memory-mapped, never loaded whole; `order.npy` and `backward.npy`: its video numbers sorted by path, and by
  path read backwards, so that filters on folders and patterns are ranges (`filters.Paths`); `ivf.faiss` (approximate only): its rows as 8-bit scalar-quantized codes
  in the trained lists (faiss IVF-SQ8: a quarter of the float32 bytes, in memory); `dead-G.npy`: the numbers of
  its videos removed or replaced by generation G.
  Product quantization (IVF-PQ) was weighed: 4-16x smaller still, but its codes ranked the right videos too low
  for recall@10 >= 0.95 after re-scoring (0.74-0.82 against 0.94 for SQ8 at the same lists probed, on clustered
  synthetic windows), and its codebooks took minutes to train.

Growth costs what changed (`update`): new videos become a new segment (their rows copied once, their codes added
to the trained lists, no training); removed videos are marked dead in their segment. Past `MAX_SEGMENTS`, the
two smallest segments are merged into one (their live videos copied), as often as needed: segments of like size
meet, so a row is copied about log2(all rows / rows of an update) times however long the index grows. A full `build` (one
segment, trained afresh, in a temporary folder renamed into place: readers keep answering from the old one)
happens only when there is none yet, the kind changes, the rows added since training pass `RETRAIN_SHARE` of the
rows trained on, or dead rows pass `DEAD_SHARE`.

Exact search scans the memory-mapped matrices in chunks: each video's best window, exactly. Approximate search
ranks on faiss's own SQ8 scores (candidate windows, the best per video) and re-scores exactly, from the matrix,
only the best windows of the `RESCORE` x `top` leading videos: a few rows read per query, so the 20 GB matrix of
10M windows need not sit in the page cache. It widens the candidate list until `top` distinct videos are found
(or every allowed window was a candidate), so filters never return too few. Either way the `top` videos' own
windows are then read and scored to find their moments (`client.library.moments`). Each segment is searched with the
same lists probed, and the best videos of all are kept. Approximate is chosen above `EXACT_LIMIT` windows; a
writer's `kind` overrides. Readers choose how to search in memory (`VectorSearch`'s `kind`: an exact scan of an
approximate structure's matrices, or inverted files trained in memory over an exact one) and never write here.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import uuid
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s3d_retrieval.client.files import atomic_write
from s3d_retrieval.client.library.filters import Filters, Paths, sort_orders
from s3d_retrieval.client.library.moments import find
from s3d_retrieval.client.library.rank import Match

EXACT_LIMIT = 250_000  # windows: above, an exact scan costs more than ~50 ms a query on 2 cores
CHUNK = 262_144  # rows scored at once by the exact scan (512 MB of float32 at most)
CANDIDATES = 64  # approximate: windows fetched per wanted video, doubled until enough videos
RESCORE = 2  # approximate: videos re-scored exactly per wanted video
SCAN = 262_144  # approximate: windows whose codes are scanned per query by default (~25 ms on 2 cores)
FOLDER = "search"
MAX_SEGMENTS = 8  # more after an update: the two smallest are merged
ORDERS = ("order.npy", "backward.npy")  # a segment's video numbers by path, and by path read backwards
RETRAIN_SHARE = 0.5  # rows added since training, as a share of the rows trained on, that call for training again
DEAD_SHARE = 0.25  # rows of removed or replaced videos, as a share of all rows, that call for a full build


def ivf_lists(rows: int) -> int:
    """Coarse clusters: ~sqrt(rows) as a power of two (2,048 at 10M windows), at least 39 windows each to
    train on (faiss's minimum)."""
    return 2 ** int(np.log2(max(1.0, min(np.sqrt(rows), rows / 39))))


@dataclass
class Parts:
    """What a segment is built from: per video, its path, duration and windows."""

    videos: list[tuple[str, float]]
    rows: Callable[[int], tuple[np.ndarray, np.ndarray]]  # video number -> (embeddings [W, D], spans [W, 2])
    counts: list[int]
    placements: list[str] | None = None  # per video: where its windows are stored in the index


def read_manifest(folder: Path) -> dict | None:
    """The built structure's manifest, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((folder / FOLDER / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _write_segment(path: Path, parts: Parts, trained=None) -> dict:
    """A segment folder (`path` must not exist yet; written under a temporary name, then renamed); returns its
    manifest entry. With `trained` (an empty trained inverted file) its rows' codes are added to a copy."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.mkdir()
    try:
        rows = sum(parts.counts)
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
        for name, order in zip(ORDERS, sort_orders([p for p, _ in parts.videos])):
            np.save(tmp / name, order)
        if trained is not None:
            _write_faiss(tmp / "ivf.faiss", _codes(trained, np.load(tmp / "embeddings.npy", mmap_mode="r")))
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"name": path.name, "rows": rows, "videos": len(parts.videos), "dead": None}


def _codes(trained, matrix: np.ndarray):
    """A copy of the trained, empty inverted file holding `matrix`'s rows (read in chunks)."""
    import faiss

    index = faiss.clone_index(trained)
    for start in range(0, len(matrix), CHUNK):
        index.add(np.ascontiguousarray(matrix[start: start + CHUNK]))
    return index


def _train_ivf(matrix: np.ndarray, lists: int | None = None):
    """An IVF-SQ8 inverted file trained on a sample of `matrix`'s rows, still empty; `lists` defaults to the
    number `matrix`'s rows call for."""
    import faiss

    rows, dim = matrix.shape
    lists = lists or ivf_lists(rows)
    index = faiss.index_factory(dim, f"IVF{lists},SQ8", faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10  # k-means iterations of the coarse quantizer: enough for lists of this size
    sample = np.random.default_rng(0).choice(rows, size=min(rows, max(lists * 39, 65_536)), replace=False)
    index.train(np.ascontiguousarray(matrix[np.sort(sample)]))
    return index


def auto_kind(rows: int) -> str:
    return "exact" if rows <= EXACT_LIMIT else "ivf"


def build(folder: Path, parts: Parts, generation: str, kind: str | None = None) -> None:
    """Write the structure afresh as one segment, trained anew, beside the one readers use: the new segment and
    its trained lists under new names, then the manifest that names them replaces the old one in one rename, and
    only then is the old one deleted. A reader never finds the folder missing; a build killed half-way leaves
    files no manifest names, swept by the next writer."""
    rows = sum(parts.counts)
    kind = kind or auto_kind(rows)
    base = folder / FOLDER
    base.mkdir(exist_ok=True)
    segment = _write_segment(base / f"s-{uuid.uuid4().hex[:12]}", parts)
    trained_name = None
    if kind == "ivf":
        matrix = np.load(base / segment["name"] / "embeddings.npy", mmap_mode="r")
        trained = _train_ivf(matrix)
        trained_name = f"trained-{uuid.uuid4().hex[:12]}.faiss"
        _write_faiss(base / trained_name, trained)
        _write_faiss(base / segment["name"] / "ivf.faiss", _codes(trained, matrix))
    write_manifest(base, generation, kind, [segment], rows if trained_name else 0, trained_name)
    collect(folder)


def _write_faiss(path: Path, index) -> None:
    """faiss writes the file itself (no copy of the codes in memory); flushed to disk, then renamed."""
    import faiss

    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(base: Path, generation: str, kind: str, segments: list[dict], trained_rows: int,
                   trained: str | None) -> None:
    """`base/manifest.json`: what a reader loads (segments in order, their dead videos) and for which generation.
    `rows` and `videos` count what the segments store, removed videos included."""
    manifest = {"generation": generation, "kind": kind, "rows": sum(s["rows"] for s in segments),
                "videos": sum(s["videos"] for s in segments), "trained_rows": trained_rows, "trained": trained,
                "segments": segments}
    atomic_write(base / "manifest.json", lambda f: f.write(json.dumps(manifest)), "w")


def collect(folder: Path) -> None:
    """Delete what the manifest no longer names (a reader that still maps it keeps its pages; a file another
    process holds open on NFS may refuse: it is tried again by the next writer)."""
    for path in garbage(folder):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def dead_rows(folder: Path, manifest: dict) -> int:
    """Rows of the videos marked dead in the segments."""
    total = 0
    for segment in manifest["segments"]:
        if segment["dead"]:
            base = folder / FOLDER / segment["name"]
            counts = np.diff(np.load(base / "first.npy"))
            total += int(counts[np.load(base / segment["dead"])].sum())
    return total


def must_build(manifest: dict | None, kind: str | None, rows_after: int) -> bool:
    """Whether only a full build will do (none yet, or another kind), rather than one being better."""
    return manifest is None or "segments" not in manifest or (kind or auto_kind(rows_after)) != manifest["kind"]


def needs_build(folder: Path, manifest: dict | None, kind: str | None, rows_after: int, dying: int = 0) -> str | None:
    """Why the structure must be built afresh rather than updated, or None. `dying`: rows this update would
    mark dead."""
    if manifest is None or "segments" not in manifest:
        return "none built yet (or by an older version)"
    wanted = kind or auto_kind(rows_after)
    if wanted != manifest["kind"]:
        return f"{manifest['kind']} -> {wanted}"
    if wanted == "ivf" and rows_after > manifest["trained_rows"] * (1 + RETRAIN_SHARE):
        return f"{rows_after:,} rows against {manifest['trained_rows']:,} trained on"
    if dead_rows(folder, manifest) + dying > DEAD_SHARE * max(1, manifest["rows"]):
        return "removed rows pass the dead share"
    return None


def update(folder: Path, manifest: dict, generation: str, added: Parts, removed: dict[str, list[int]]) -> None:
    """Change the structure in place by what changed: `added` videos as a new segment, `removed` (segment name
    -> its video numbers) marked dead, the smallest segments merged past `MAX_SEGMENTS`; then the manifest is
    replaced, and what it no longer names is deleted (a reader that still maps it keeps its pages)."""
    base = folder / FOLDER
    trained = None
    if manifest["kind"] == "ivf":
        import faiss

        trained = faiss.read_index(str(base / manifest["trained"]))
    segments = [dict(s) for s in manifest["segments"]]
    for segment in segments:
        gone = removed.get(segment["name"])
        if gone:
            dead = set(np.load(base / segment["name"] / segment["dead"]).tolist()) if segment["dead"] else set()
            name = f"dead-{generation}.npy"
            np.save(base / segment["name"] / f".{name}", np.array(sorted(dead | set(gone)), np.int64))
            os.replace(base / segment["name"] / f".{name}", base / segment["name"] / name)
            segment["dead"] = name
    if added.counts:
        segments.append(_write_segment(base / f"s-{uuid.uuid4().hex[:12]}", added, trained))
    while len(segments) > MAX_SEGMENTS:
        pair = sorted(segments, key=lambda s: s["rows"])[:2]
        merged = _write_segment(base / f"s-{uuid.uuid4().hex[:12]}", _alive(base, pair), trained)
        segments = [s for s in segments if s not in pair] + [merged]
    write_manifest(base, generation, manifest["kind"], segments, manifest["trained_rows"], manifest["trained"])
    collect(folder)


def _alive(base: Path, segments: list[dict]) -> Parts:
    """The live videos of `segments`, as the parts of one new segment (memory-mapped, read as copied)."""
    loaded = [Segment(base / s["name"], s["dead"]) for s in segments]
    picks = [(seg, v) for seg in loaded for v in range(len(seg.videos)) if not seg.dead[v]]

    def rows(i: int) -> tuple[np.ndarray, np.ndarray]:
        seg, v = picks[i]
        window = slice(seg.first[v], seg.first[v + 1])
        return seg.matrix[window], seg.spans[window]

    return Parts([seg.videos[v] for seg, v in picks], rows, [int(seg.first[v + 1] - seg.first[v]) for seg, v in picks],
                 [seg.placements[v] for seg, v in picks])


def still_held(videos: list[tuple[str, float]], placements: list[str], dead: np.ndarray,
               current: dict[str, str]) -> np.ndarray:
    """Numbers of the live videos whose windows are still their path's current ones (`current`: path ->
    placement of the index's entries), each path once."""
    held, seen = [], set()
    for n, ((path, _), where) in enumerate(zip(videos, placements)):
        if not dead[n] and where and current.get(path) == where and path not in seen:
            held.append(n)
            seen.add(path)
    return np.array(held, np.int64)


def garbage(folder: Path) -> list[Path]:
    """Files and folders inside `search/` that its manifest does not name: a killed update's, or replaced."""
    base = folder / FOLDER
    manifest = read_manifest(folder)
    if manifest is None or "segments" not in manifest:
        return []
    keep = {"manifest.json", manifest.get("trained")} | {s["name"] for s in manifest["segments"]}
    found = [p for p in base.iterdir() if p.name not in keep]
    for segment in manifest["segments"]:
        found += [p for p in (base / segment["name"]).glob("*dead-*.npy") if p.name != segment["dead"]]
    return found


class Segment:
    """One segment folder, memory-mapped; answers top videos per query among its (allowed) videos."""

    def __init__(self, path: Path, dead: str | None = None):
        listed = json.loads((path / "videos.json").read_text())
        self.videos = [(v[0], v[1]) for v in listed]
        self.placements = [v[2] if len(v) > 2 else "" for v in listed]
        self.first = np.load(path / "first.npy")
        self.matrix = np.load(path / "embeddings.npy", mmap_mode="r")
        self.spans = np.load(path / "spans.npy", mmap_mode="r")
        self.durations = np.fromiter((d for _, d in self.videos), np.float64, len(self.videos))
        self.dead = np.zeros(len(self.videos), bool)
        if dead:
            self.dead[np.load(path / dead)] = True
        self.path, self.dead_file = path, dead
        self.ann: Any = None  # its faiss inverted file, once searched approximately
        self.nprobe = 1
        stored = [path / name for name in ORDERS]  # read now, with the rest: a writer may collect the segment later
        self._orders = [np.load(f) for f in stored] if all(f.is_file() for f in stored) else None
        self._paths: list[Paths] = []  # made at the first filter, shared with the copies (`with_dead`)

    def owner_of(self, rows: np.ndarray | int) -> np.ndarray:
        """The video numbers of window `rows`."""
        return np.searchsorted(self.first, rows, side="right") - 1

    def select(self, filters: Filters) -> np.ndarray | None:
        """Mask of the videos `filters` accept (dead ones included), or None when nothing is filtered."""
        if filters == Filters():
            return None
        if not self._paths:
            names = [p for p, _ in self.videos]
            orders = self._orders or sort_orders(names)  # (a segment of an earlier release: sorted here, once)
            self._paths.append(Paths(names, *orders))
        return filters.select(self._paths[0], self.durations)

    def with_dead(self, dead: str | None) -> Segment:
        """A copy of this segment (its maps and codes shared, never changed) with the dead videos of `dead`."""
        other = copy.copy(self)
        if dead != self.dead_file:
            other.dead, other.dead_file = np.zeros(len(self.videos), bool), dead
            if dead:
                other.dead[np.load(self.path / dead)] = True
        return other

    def allowed_rows(self, videos: np.ndarray | None) -> np.ndarray | None:
        """Boolean mask of the rows of the allowed video numbers (None: all)."""
        if videos is None:
            return None
        keep = np.zeros(len(self.videos), bool)
        keep[videos] = True
        return np.repeat(keep, np.diff(self.first))

    def search(self, queries: np.ndarray, top: int, videos: np.ndarray | None = None,
               moments: int = 1) -> list[list[Match]]:
        """For each query, the `top` videos (of `videos`, video numbers; None: all) by their best window, each
        with up to `moments` moments."""
        if not len(self.matrix):
            return [[] for _ in queries]
        mask = self.allowed_rows(videos)
        if self.ann is None:
            return self._exact(queries, top, mask, moments)
        return [self._approximate(q, top, mask, moments) for q in queries]

    def _best_rows(self, rows: np.ndarray, scores: np.ndarray, limit: int) -> np.ndarray:
        """Of `rows` (scored by `scores`), the best row of each video, for the `limit` best videos, best first."""
        order = np.argsort(-scores, kind="stable")
        _, firsts = np.unique(self.owner_of(rows[order]), return_index=True)
        return rows[order[np.sort(firsts)[:limit]]]

    def _matches(self, rows: np.ndarray, query: np.ndarray, moments: int) -> list[Match]:
        """One match per row's video (each row of another video), its moments found from all of the video's
        windows scored exactly (read for these videos only), best score first."""
        matches = []
        for row in rows:
            video = int(self.owner_of(row))
            first, end = self.first[video], self.first[video + 1]
            found = find(self.matrix[first:end], self.spans[first:end], query, moments)
            matches.append(Match(self.videos[video][0], tuple(found)))
        return sorted(matches, key=lambda m: -m.score)

    def _exact(self, queries: np.ndarray, top: int, mask: np.ndarray | None, moments: int) -> list[list[Match]]:
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
            results.append(self._matches(best_row[q, chosen], queries[q], moments))
        return results

    def _approximate(self, query: np.ndarray, top: int, mask: np.ndarray | None, moments: int) -> list[Match]:
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
        k, nprobe = min(allowed, top * CANDIDATES), self.nprobe
        while True:
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
            scores, found = self.ann.search(query[None], k, params=params)
            keep = found[0] >= 0
            got = int(keep.sum())
            best = self._best_rows(found[0][keep], scores[0][keep], top * RESCORE)
            if len(best) >= top or got == allowed:
                rescored = np.asarray(self.matrix[np.sort(best)]) @ query
                return self._matches(np.sort(best)[np.argsort(-rescored, kind="stable")[:top]], query, moments)
            if got == k:
                k = min(allowed, k * 2)
            elif nprobe < self.ann.nlist:  # the probed lists ran out: probe more
                nprobe = min(self.ann.nlist, nprobe * 2)
            else:
                return self._exact(query[None], top, mask, moments)[0]


class VectorSearch:
    """A built `search/` folder: its segments memory-mapped, searched together."""

    def __init__(self, folder: Path, nprobe: int | None = None, kind: str | None = None,
                 loaded: VectorSearch | None = None):
        """`nprobe`: inverted lists searched. By default as many as hold ~`SCAN` windows: the cost of a query is
        the codes it scans, so it stays flat as the library grows, while recall grows with it (lists get purer:
        recall@10 0.978 at 1M synthetic windows, 134 of 512 lists; 0.997 at 10M, 54 of 2,048). More are probed
        when a filter leaves too few candidates. `kind`: how to search (default: as built), in memory only.
        `loaded`: a structure read before, whose segments still named are kept rather than read again (with
        their dead videos read anew), so a reload after an update costs what changed.
        Raises OSError, KeyError, ValueError or RuntimeError (faiss) when a writer replaced what it was reading
        (read again)."""
        base = folder / FOLDER
        self.manifest = json.loads((base / "manifest.json").read_text())
        self.kind = kind or self.manifest["kind"]
        self.asked = (kind, nprobe)  # how it was asked to search: a reload asked the same way may reuse it whole
        reuse = loaded if loaded and loaded.kind == self.kind and self.manifest["kind"] == self.kind and \
            loaded.manifest.get("trained") == self.manifest.get("trained") else None  # not in-memory inverted files
        before = {seg.path.name: seg for seg in reuse.segments} if reuse else {}
        self.segments: list[Segment] = [before[s["name"]].with_dead(s["dead"]) if s["name"] in before
                         else Segment(base / s["name"], s["dead"]) for s in self.manifest["segments"]]
        self.videos = [v for seg in self.segments for v in seg.videos]
        self.placements = [k for seg in self.segments for k in seg.placements]
        self.offsets = np.cumsum([0, *(len(seg.videos) for seg in self.segments)])
        self.dead = np.concatenate([seg.dead for seg in self.segments]) if self.segments else np.zeros(0, bool)
        self.rows = sum(len(seg.matrix) for seg in self.segments)
        if self.kind == "ivf" and self.rows:
            self._load_ivf(nprobe)

    def _load_ivf(self, nprobe: int | None) -> None:
        import faiss

        if self.manifest["kind"] == "ivf":
            for seg in self.segments:
                seg.ann = seg.ann or faiss.read_index(str(seg.path / "ivf.faiss"))
        else:  # an exact structure searched approximately: inverted files in memory, trained on the largest
            trained = _train_ivf(max(self.segments, key=lambda s: len(s.matrix)).matrix)
            for seg in self.segments:
                seg.ann = _codes(trained, seg.matrix)
        nlist = self.segments[0].ann.nlist
        probes = min(nlist, nprobe or max(1, round(SCAN * nlist / self.rows)))
        for seg in self.segments:  # on the segment, not its shared faiss index: a structure still answering
            seg.nprobe = probes    # from the same segments keeps its own

    def select(self, filters: Filters) -> np.ndarray | None:
        """Mask over the video numbers of every segment of the videos `filters` accept, or None: all."""
        masks = [mask for seg in self.segments if (mask := seg.select(filters)) is not None]
        if not masks:  # no segments, or nothing filtered
            return None
        return np.concatenate(masks)

    def windows_of(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Video `number`'s window embeddings [W, D] and spans [W, 2], read from its segment."""
        at = int(np.searchsorted(self.offsets, number, side="right")) - 1
        seg, local = self.segments[at], number - self.offsets[at]
        rows = slice(seg.first[local], seg.first[local + 1])
        return np.asarray(seg.matrix[rows]), np.asarray(seg.spans[rows])

    def search(self, queries: np.ndarray, top: int, videos: np.ndarray | None = None,
               moments: int = 1) -> list[list[Match]]:
        """For each query, the `top` live videos (of `videos`, video numbers across segments; None: all) by
        their best window, each with up to `moments` moments."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        allowed = ~self.dead
        if videos is not None:
            chosen = np.zeros(len(self.videos), bool)
            chosen[videos] = True
            allowed &= chosen
        whole = videos is None and not self.dead.any()
        found: list[list[Match]] = [[] for _ in queries]
        for seg, start, end in zip(self.segments, self.offsets[:-1], self.offsets[1:]):
            local = None if whole else np.flatnonzero(allowed[start:end])
            if local is not None and not len(local):
                continue
            for q, matches in enumerate(seg.search(queries, top, local, moments)):
                found[q] += matches
        return [sorted(matches, key=lambda m: -m.score)[:top] for matches in found]
