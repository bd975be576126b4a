"""Writers for search results: an aligned text table (the JSON document is `Result.as_json`)."""
from __future__ import annotations

from s3d_retrieval.client.library.search import Result


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
