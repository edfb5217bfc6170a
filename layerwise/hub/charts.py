"""Inline SVG charts for the dashboard (no script, no external assets)."""

from __future__ import annotations

import html


def latency_chart(points: list[tuple[int, str, float]], title: str) -> str:
    """Bars of p50 latency (ms), one per profile job (id, bundle, p50), oldest left; an
    empty string when there is nothing to draw."""
    if not points:
        return ""
    pts = sorted(points)[-40:]
    w, h, m = 560, 200, 40
    top = max(p for _, _, p in pts) * 1.15 or 1.0
    bar = (w - m - 10) / len(pts)
    parts = [f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<line x1="{m}" y1="{h - 24}" x2="{w - 10}" y2="{h - 24}" stroke="#999"/>',
             f'<text x="4" y="14" font-size="11">{top:.3g} ms</text>',
             f'<text x="{w / 2}" y="{h - 6}" font-size="11" text-anchor="middle">'
             f"{html.escape(title)}: p50 per profile job</text>"]
    for i, (job, spec, p50) in enumerate(pts):
        bh = (h - 24 - 20) * p50 / top
        x = m + i * bar
        parts.append(f'<rect x="{x + 2:.1f}" y="{h - 24 - bh:.1f}" width="{max(bar - 4, 1):.1f}"'
                     f' height="{bh:.1f}" fill="#3b6fb6"><title>job {job} '
                     f"{html.escape(str(spec))}: {p50:.3f} ms</title></rect>")
    return "".join(parts) + "</svg>"
