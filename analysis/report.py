"""report.html for an importance analysis: self-contained HTML with inline SVG (no script, no
CDN, opens offline). Charts: per-layer bars per method, a method × layer heatmap, the
agreement matrix between methods (Spearman ρ), and predicted against measured damage.

Input is the plain `importance` dict: {"model": str, "layers": [path, ...],
"methods": {name: {"scores": {path: float}, ...}}, "ensemble": {"scores": {...}},
"measured_damage": {path: float} (optional)}.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
.grid{display:flex;flex-wrap:wrap;gap:16px}.card{border:1px solid #eee;padding:8px}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right;font-size:12px}
th{background:#f5f5f5}.muted{color:#777;font-size:12px}
"""


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either is constant."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = x.argsort(kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # average ties
        idx = x == v
        ranks[idx] = ranks[idx].mean()
    return ranks


def _norm(values: list[float]) -> list[float]:
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = hi - lo or 1.0
    return [(v - lo) / span if math.isfinite(v) else 0.0 for v in values]


def _color(t: float) -> str:
    """White → dark blue for t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    r, g, b = (int(255 + (c - 255) * t) for c in (8, 48, 107))
    return f"rgb({r},{g},{b})"


def _bars(title: str, labels: list[str], values: list[float]) -> str:
    w, bh, pad = 360, 14, 120
    h = bh * len(labels) + 24
    norm = _norm(values)
    parts = [f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="12" font-size="12" font-weight="bold">{html.escape(title)}</text>']
    for i, (lab, v, n) in enumerate(zip(labels, values, norm)):
        y = 20 + i * bh
        parts.append(f'<text x="{pad - 4}" y="{y + 10}" font-size="10" text-anchor="end">'
                     f"{html.escape(lab[-22:])}</text>")
        parts.append(f'<rect x="{pad}" y="{y}" width="{max(1, n * (w - pad - 50)):.1f}" '
                     f'height="{bh - 3}" fill="#3b6fb6"><title>{html.escape(lab)}: {v:.4g}'
                     "</title></rect>")
        parts.append(f'<text x="{pad + n * (w - pad - 50) + 4:.1f}" y="{y + 10}" '
                     f'font-size="9">{v:.3g}</text>')
    return "".join(parts) + "</svg>"


def _heatmap(rows: list[str], cols: list[str], cells: list[list[float]], title: str,
             signed: bool = False) -> str:
    cw, ch, left, top = 34, 18, 150, 110
    w, h = left + cw * len(cols) + 70, top + ch * len(rows) + 10
    parts = [f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">']
    for j, c in enumerate(cols):
        x = left + j * cw + cw / 2
        parts.append(f'<text transform="translate({x},{top - 4}) rotate(-60)" font-size="10">'
                     f"{html.escape(c[-18:])}</text>")
    for i, r in enumerate(rows):
        y = top + i * ch
        parts.append(f'<text x="{left - 4}" y="{y + 13}" font-size="10" text-anchor="end">'
                     f"{html.escape(r)}</text>")
        for j, v in enumerate(cells[i]):
            t = (v + 1) / 2 if signed else v
            fill = "#ddd" if not math.isfinite(v) else _color(t)
            parts.append(f'<rect x="{left + j * cw}" y="{y}" width="{cw - 1}" height="{ch - 1}" '
                         f'fill="{fill}"><title>{html.escape(r)} / {html.escape(cols[j])}: '
                         f"{v:.3f}</title></rect>")
    return "".join(parts) + "</svg>"


def _scatter(xs: list[float], ys: list[float], labels: list[str], title: str) -> str:
    w, h, m = 420, 300, 40
    nx, ny = _norm(xs), _norm(ys)
    parts = [f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<line x1="{m}" y1="{h - m}" x2="{w - 10}" y2="{h - m}" stroke="#999"/>',
             f'<line x1="{m}" y1="10" x2="{m}" y2="{h - m}" stroke="#999"/>',
             f'<text x="{w / 2}" y="{h - 8}" font-size="11" text-anchor="middle">'
             "predicted importance (ensemble)</text>",
             f'<text transform="translate(12,{h / 2}) rotate(-90)" font-size="11" '
             'text-anchor="middle">measured damage</text>']
    for x, y, lab, rx, ry in zip(nx, ny, labels, xs, ys):
        cx, cy = m + x * (w - m - 110), h - m - y * (h - m - 30)
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="#c0392b">'
                     f"<title>{html.escape(lab)}: {rx:.3g} / {ry:.3g}</title></circle>")
        parts.append(f'<text x="{cx + 7:.1f}" y="{cy + 4:.1f}" font-size="9">'
                     f"{html.escape(lab[-14:])}</text>")
    return "".join(parts) + "</svg>"


def render_html(imp: dict) -> str:
    """The report page for an importance dict (see the module docstring)."""
    layers: list[str] = imp["layers"]
    methods = {k: v for k, v in imp["methods"].items() if v.get("scores")}
    series = {name: [float(m["scores"].get(p, float("nan"))) for p in layers]
              for name, m in methods.items()}
    if imp.get("ensemble", {}).get("scores"):
        series["ensemble"] = [float(imp["ensemble"]["scores"].get(p, float("nan")))
                              for p in layers]
    names = list(series)
    body = [f"<h1>Layer importance — {html.escape(str(imp.get('model', '')))}</h1>",
            f'<p class="muted">{len(layers)} layers, {len(methods)} methods. Higher = more '
            "important. Bars are scaled per method.</p>"]
    body.append("<h2>Per-layer scores by method</h2><div class='grid'>")
    body += [f"<div class='card'>{_bars(n, layers, series[n])}</div>" for n in names]
    body.append("</div><h2>Method × layer (scores scaled 0–1 per method)</h2>")
    body.append(_heatmap(names, layers, [_norm(series[n]) for n in names], "method x layer"))
    agree = [[spearman(series[a], series[b]) for b in names] for a in names]
    body.append("<h2>Agreement between methods (Spearman ρ)</h2>")
    body.append(_heatmap(names, names, agree, "agreement", signed=True))
    damage = imp.get("measured_damage")
    if damage and "ensemble" in series:
        measured = [float(damage.get(p, float("nan"))) for p in layers]
        rho = spearman(series["ensemble"], measured)
        body.append(f"<h2>Predicted vs measured damage (ρ = {rho:.3f})</h2>")
        body.append(_scatter(series["ensemble"], measured, layers, "predicted vs measured"))
        rows = "".join(f"<tr><th>{html.escape(n)}</th><td>{spearman(series[n], measured):.3f}"
                       "</td></tr>" for n in names)
        body.append(f"<table><tr><th>method</th><th>ρ vs measured</th></tr>{rows}</table>")
    costs = "".join(
        f"<tr><th>{html.escape(n)}</th><td>{m.get('cost', {}).get('forward_equivalents', '')}"
        "</td></tr>" for n, m in methods.items())
    body.append("<h2>Cost (forward-pass equivalents)</h2>"
                f"<table><tr><th>method</th><th>cost</th></tr>{costs}</table>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>layerwise importance"
            f"</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>")


def write_report(imp: dict, path: str | Path) -> Path:
    p = Path(path)
    p.write_text(render_html(imp), encoding="utf-8")
    return p
