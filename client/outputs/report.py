"""Writers for search results: an aligned text table and the JSON document."""
from __future__ import annotations

from client.library.search import Result


def as_json(result: Result) -> dict:
    return {
        "results": [{"query": q, "matches": [{"video": m.video, "score": round(m.score, 6), "start": round(m.start, 3),
                                              "end": round(m.end, 3)} for m in matches]}
                    for q, matches in zip(result.queries, result.matches)],
        "errors": [{"video": video, "error": why} for video, why in result.errors],
        "warnings": list(result.warnings),
    }


def as_table(result: Result) -> str:
    lines = []
    for query, matches in zip(result.queries, result.matches):
        lines.append(f"query: {query}")
        rows = [("rank", "score", "video", "moment")]
        rows += [(str(i), f"{m.score:.3f}", m.video, f"{m.start:.1f}-{m.end:.1f} s")
                 for i, m in enumerate(matches, start=1)]
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        for row in rows:
            lines.append("  " + "  ".join(cell.rjust(w) if c < 2 else cell.ljust(w)
                                          for c, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if not matches:
            lines.append("  (no videos to rank)")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
