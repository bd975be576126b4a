"""A self-contained HTML page of search results: per query, the ranked videos with their scores, a
thumbnail of the best moment, the video's other moments, and a <video> that plays the best one (where the
browser can play the file). Every text from outside (queries, paths, errors) is escaped.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from s3d_retrieval.client.files import atomic_write
from s3d_retrieval.client.library.search import Result
from s3d_retrieval.client.outputs.stills import jpeg_at

THUMBNAIL = 160
PLAYABLE = {".mp4", ".m4v", ".webm", ".ogv", ".mov"}
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse}td,th{padding:.4rem .8rem;border-bottom:1px solid #ddd;vertical-align:middle;text-align:left}
td.score{font-variant-numeric:tabular-nums;text-align:right}img{display:block;border-radius:4px}
video{max-width:320px;max-height:180px}.path{font-family:monospace;font-size:.85rem;word-break:break-all}
.note{color:#666;font-size:.9rem}.error{color:#a00}
"""


def thumbnail(path: str, seconds: float) -> str | None:
    """A data: URI of a JPEG of the frame shown at `seconds`, or None if it cannot be read."""
    jpeg = jpeg_at(path, seconds, THUMBNAIL)
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode() if jpeg else None


def render(result: Result, title: str = "Text-to-video search") -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>",
             "<p class=note>Scores are the model's raw dot products (higher is closer), not probabilities.</p>"]
    for warning in result.warnings:
        parts.append(f"<p class=note>{e(warning)}</p>")
    for query, matches in zip(result.queries, result.matches):
        parts.append(f"<h2>{e(query)}</h2>")
        if not matches:
            parts.append("<p class=note>No videos to rank.</p>")
            continue
        parts.append("<table><tr><th>#</th><th>score</th><th>moment</th><th>video</th></tr>")
        for rank, m in enumerate(matches, start=1):
            thumb = thumbnail(m.video, (m.start + m.end) / 2)
            image = f'<img src="{thumb}" width={THUMBNAIL} height={THUMBNAIL} alt="">' if thumb else ""
            player = ""
            if Path(m.video).suffix.lower() in PLAYABLE:
                uri = e(Path(m.video).resolve().as_uri())
                poster = f' poster="{thumb}"' if thumb else ""
                player = f'<video controls preload=none{poster} src="{uri}#t={m.start:.1f},{m.end:.1f}"></video>'
            more = "".join(f"<div class=note>also {x.start:.1f}-{x.end:.1f} s ({x.score:.3f})</div>"
                           for x in m.moments[1:])
            parts.append(f"<tr><td>{rank}</td><td class=score>{m.score:.3f}</td>"
                         f"<td>{m.start:.1f}-{m.end:.1f} s{image}{more}</td>"
                         f"<td>{player}<div class=path>{e(m.video)}</div></td></tr>")
        parts.append("</table>")
    if result.errors:
        parts.append("<h2>Videos that could not be used</h2><ul>")
        parts += [f"<li class=error><span class=path>{e(v)}</span>: {e(why)}</li>" for v, why in result.errors]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write(path: Path, page: str) -> None:
    atomic_write(path, lambda f: f.write(page), "w")
