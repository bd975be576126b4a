"""Writers for an evaluation: a text table, and a self-contained HTML page (inline SVG, no network at view
time) with the recall-at-K curve, the rank histogram and the worst queries with their top clips."""
from __future__ import annotations

import html

import numpy as np

from s3d_retrieval.client.library.evaluate import Evaluation, clip_name, worst
from s3d_retrieval.client.outputs.html_report import STYLE

METRICS = ("R@1", "R@5", "R@10", "MdR", "MnR")
WIDTH, HEIGHT, PAD = 420, 220, 36


def _cell(name: str, value: float) -> str:
    return f"{100 * value:.1f}" if name.startswith("R@") else f"{value:.1f}"


def as_table(ev: Evaluation) -> str:
    p = ev.protocol
    windows = f", {p['windows']} windows" if p["windows"] else ""
    lines = [f"{ev.queries} queries, {ev.videos} clips, {len(ev.excluded)} excluded; protocol {p['name']}{windows} "
             f"({p['frames']} frames at {p['fps']:g} fps, {p['size']}x{p['size']}); recalls in %",
             "  direction      " + "".join(f"{m:>8}" for m in METRICS)]
    for name, figures in (("text->video", ev.text_to_video), ("video->text", ev.video_to_text)):
        lines.append(f"  {name:<15}" + "".join(f"{_cell(m, figures[m]):>8}" for m in METRICS))
    if ev.moments and ev.best_window:
        lines.append("  moments        " + ", ".join(f"{k} {100 * v:.1f}" for k, v in ev.moments.items()))
        lines.append("  (best window   " + ", ".join(f"{k} {100 * v:.1f}" for k, v in ev.best_window.items()) + ")")
    lines.append(f"  chance R@1     {100 / max(1, ev.videos):>8.1f}")
    return "\n".join(lines) + "\n"


def _svg_axes(x_label: str, y_label: str) -> list[str]:
    return [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width={WIDTH} height={HEIGHT} role=img>',
            f'<line x1={PAD} y1={HEIGHT - PAD} x2={WIDTH - 8} y2={HEIGHT - PAD} stroke="#888"/>',
            f'<line x1={PAD} y1=8 x2={PAD} y2={HEIGHT - PAD} stroke="#888"/>',
            f'<text x={WIDTH // 2} y={HEIGHT - 6} font-size=12 text-anchor=middle>{x_label}</text>',
            f'<text x=12 y={HEIGHT // 2} font-size=12 transform="rotate(-90 12 {HEIGHT // 2})" '
            f'text-anchor=middle>{y_label}</text>']


def recall_curve(rank: np.ndarray, videos: int) -> str:
    """R@K for K = 1..videos as a polyline; chance (K / videos) dashed."""
    ks = np.arange(1, videos + 1)
    recall = [(rank <= k).mean() for k in ks]
    x = lambda k: PAD + (WIDTH - PAD - 8) * (k - 1) / max(1, videos - 1)  # noqa: E731
    y = lambda r: HEIGHT - PAD - (HEIGHT - PAD - 8) * r  # noqa: E731
    line = " ".join(f"{x(k):.1f},{y(r):.1f}" for k, r in zip(ks, recall))
    chance = " ".join(f"{x(k):.1f},{y(k / videos):.1f}" for k in ks)
    return "".join(_svg_axes(f"K (1..{videos})", "R@K") + [
        f'<polyline points="{chance}" fill=none stroke="#bbb" stroke-dasharray="4 3"/>',
        f'<polyline points="{line}" fill=none stroke="#1565c0" stroke-width=2/>', "</svg>"])


def rank_histogram(rank: np.ndarray, videos: int, bins: int = 20) -> str:
    edges = np.unique(np.linspace(1, videos + 1, min(bins, videos) + 1).round())
    counts, _ = np.histogram(rank, bins=edges)
    bar = (WIDTH - PAD - 8) / len(counts)
    top = max(1, counts.max())
    bars = [f'<rect x={PAD + i * bar:.1f} y={HEIGHT - PAD - (HEIGHT - PAD - 8) * c / top:.1f} width={bar - 2:.1f} '
            f'height={(HEIGHT - PAD - 8) * c / top:.1f} fill="#1565c0"><title>ranks {int(lo)}-{int(hi) - 1}: {c}'
            f'</title></rect>' for i, (c, lo, hi) in enumerate(zip(counts, edges[:-1], edges[1:]))]
    return "".join(_svg_axes(f"rank of the true clip (1..{videos})", "queries") + bars + ["</svg>"])


def render(ev: Evaluation, title: str = "Text-to-video retrieval evaluation") -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>",
             f"<pre>{e(as_table(ev))}</pre>",
             "<p class=note>A query's rank counts the clips scoring strictly higher than its true clip, plus one.</p>",
             "<h2>Recall at K</h2>", recall_curve(ev.text_ranks, ev.videos),
             "<h2>Ranks of the true clips</h2>", rank_histogram(ev.text_ranks, ev.videos),
             "<h2>Worst queries</h2><table><tr><th>query</th><th>rank</th><th>top clips (score)</th></tr>"]
    for sentence, rank, top in worst(ev):
        listed = "<br>".join(f"{e(clip_name(c))} ({s:.3f})" for c, s in top)
        parts.append(f"<tr><td>{e(sentence)}</td><td>{rank}</td><td class=path>{listed}</td></tr>")
    parts.append("</table>")
    if ev.excluded:
        parts.append(f"<h2>Excluded ({len(ev.excluded)})</h2><p class=path>{e(', '.join(ev.excluded))}</p>")
    parts.append("</body></html>\n")
    return "".join(parts)
