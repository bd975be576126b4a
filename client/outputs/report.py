"""Writers for search results: an aligned text table and the JSON document."""
from __future__ import annotations

from s3d_retrieval.client.library.moments import Moment
from s3d_retrieval.client.library.rank import Match
from s3d_retrieval.client.library.search import Result


def _moment(m: Moment) -> dict:
    return {"start": round(m.start, 3), "end": round(m.end, 3), "score": round(m.score, 6),
            "window": {"start": round(m.window[0], 3), "end": round(m.window[1], 3)}}


def _match(m: Match) -> dict:
    """`start`/`end`: the best moment's span; `score` and `window`: its best window, which ranks the video (the
    video's best window; for a like, the best outside the moment asked about); `moments`: every moment found,
    best first (the first is the one above)."""
    best = _moment(m.moments[0])
    return {"video": m.video, **best, "moments": [best, *map(_moment, m.moments[1:])]}


def as_json(result: Result) -> dict:
    return {
        "results": [{"query": q, "matches": [_match(m) for m in matches]}
                    for q, matches in zip(result.queries, result.matches)],
        "errors": [{"video": video, "error": why} for video, why in result.errors],
        "warnings": list(result.warnings),
    }


def as_table(result: Result) -> str:
    lines = []
    for query, matches in zip(result.queries, result.matches):
        lines.append(f"query: {query}")
        rows = [("rank", "score", "video", "moment")]
        for i, m in enumerate(matches, start=1):  # a video's further moments on lines of their own
            rows += [(str(i) if n == 0 else "", f"{x.score:.3f}", m.video if n == 0 else "",
                      f"{x.start:.1f}-{x.end:.1f} s") for n, x in enumerate(m.moments)]
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        for row in rows:
            lines.append("  " + "  ".join(cell.rjust(w) if c < 2 else cell.ljust(w)
                                          for c, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if not matches:
            lines.append("  (no videos to rank)")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
