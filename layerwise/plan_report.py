"""report.html of a plan search: the candidates and their Pareto frontier (inline SVG)."""

from __future__ import annotations

import html
from pathlib import Path


def _plot(cands: list[dict], frontier: list[dict], bound: float) -> str:
    w, h, m = 560, 340, 50
    pts = [c for c in cands if c["latency_ms"] is not None]
    if not pts:
        return "<p>no candidate reached an artifact</p>"
    lat = [c["latency_ms"] for c in pts]
    qd = [100 * c["quality_drop"] for c in pts] + [100 * bound]
    x0, x1 = min(lat) * 0.9, max(lat) * 1.1
    y0, y1 = 0.0, max(qd) * 1.15 or 1.0

    def xy(c):
        x = m + (c["latency_ms"] - x0) / (x1 - x0) * (w - m - 20)
        y = h - m - (100 * c["quality_drop"] - y0) / (y1 - y0) * (h - m - 20)
        return x, y

    yb = h - m - (100 * bound - y0) / (y1 - y0) * (h - m - 20)
    parts = [f'<svg width="{w}" height="{h}" role="img" aria-label="pareto">',
             f'<line x1="{m}" y1="{h - m}" x2="{w - 10}" y2="{h - m}" stroke="#999"/>',
             f'<line x1="{m}" y1="10" x2="{m}" y2="{h - m}" stroke="#999"/>',
             f'<line x1="{m}" y1="{yb:.1f}" x2="{w - 10}" y2="{yb:.1f}" stroke="#c0392b" '
             'stroke-dasharray="4 3"/>',
             f'<text x="{w - 12}" y="{yb - 4:.1f}" font-size="10" text-anchor="end" '
             'fill="#c0392b">--max-drop</text>',
             f'<text x="{w / 2}" y="{h - 12}" font-size="11" text-anchor="middle">'
             f"p50 latency, ms ({x0:.2f}–{x1:.2f})</text>",
             f'<text transform="translate(14,{h / 2}) rotate(-90)" font-size="11" '
             'text-anchor="middle">quality loss, %</text>']
    front = sorted((xy(c) for c in frontier), key=lambda p: p[0])
    if len(front) > 1:
        parts.append('<polyline fill="none" stroke="#3b6fb6" stroke-width="1.5" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y in front) + '"/>')
    for c in pts:
        x, y = xy(c)
        label = f"-{len(c['drop'])} {c['precision']}" + (
            f" +{len(c['keep_fp32'])}fp32" if c["keep_fp32"] else "")
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#3b6fb6"><title>'
                     f"{html.escape(label)}: {c['latency_ms']:.2f} ms, loss "
                     f"{100 * c['quality_drop']:.2f}%</title></circle>")
        parts.append(f'<text x="{x + 7:.1f}" y="{y - 6:.1f}" font-size="10">'
                     f"{html.escape(label)}</text>")
    return "".join(parts) + "</svg>"


def _row(c: dict) -> str:
    lat = "" if c["latency_ms"] is None else f"{c['latency_ms']:.2f}"
    size = "" if c["size_bytes"] is None else f"{c['size_bytes'] / 2**20:.1f}"
    return (f"<tr><td>{len(c['drop'])}</td><td>{c['precision']}</td>"
            f"<td>{len(c['keep_fp32'])}</td><td>{100 * c['quality_drop']:.2f}%</td>"
            f"<td>{c['quality_measured_on']}</td><td>{lat}</td><td>{size}</td></tr>")


def write_plan_report(search: dict, spec: str, path: Path) -> Path:
    """Write the search's report page (self-contained, no script)."""
    path.write_text(plan_report(search, spec), encoding="utf-8")
    return path


def _task(search: dict) -> str:
    """The task metric of the original and the chosen plan on both splits of --eval."""
    task = search.get("task_metric")
    chosen = search.get("chosen", {}).get("task_metric")
    if not task or not chosen:
        return ""
    ref = task["reference"]
    return (f"<p>{html.escape(task['name'])}: original {ref['decide']:.4f} / "
            f"{ref['test']:.4f}, chosen plan {chosen['decide']:.4f} / {chosen['test']:.4f} "
            f"(deciding split of {task['decide_examples']} / held-back test split of "
            f"{task['test_examples']} labelled examples, the latter never seen by the "
            "search)</p>")


def _layers(search: dict) -> str:
    """The per-layer table: INT8 sensitivity joined with FLOPs share and block importance."""
    rows = search.get("layers") or []
    if not rows:
        return ""
    kept = set(search.get("chosen", {}).get("keep_fp32", []))

    def cell(v, fmt):
        return "—" if v is None else format(v, fmt)

    body = "".join(
        f"<tr><td>{html.escape(r['layer'])}{' (kept fp32)' if r['layer'] in kept else ''}</td>"
        f"<td>{r['int8_error']:.4f}</td><td>{cell(r['flops_share'], '.1%')}</td>"
        f"<td>{html.escape(str(r['block'] or '—'))}</td>"
        f"<td>{cell(r['block_importance'], '.3f')}</td></tr>" for r in rows)
    return ("<h2>Layers: INT8 sensitivity, cost and importance</h2><p>int8 error: the "
            "output's relative error with only that layer in int8 (simulated); the search "
            "keeps the most sensitive layers in fp32 while INT8 misses the bound.</p>"
            "<table><tr><th>layer</th><th>int8 error</th><th>FLOPs</th><th>block</th>"
            f"<th>block importance</th></tr>{body}</table>")


def plan_report(search: dict, spec: str) -> str:
    """The search's report page as HTML (self-contained, no script)."""
    rows = "".join(_row(c) for c in search["candidates"])
    chosen = search.get("chosen", {})
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>layerwise plan</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:24px}td,th{padding:2px 8px}"
        "th{background:#f4f4f4}</style></head><body>"
        f"<h1>Plan search — {html.escape(spec)}</h1>"
        f"<p>bound: quality loss ≤ {100 * search['bound']['max_drop']:.2f}% "
        f"({html.escape(search['quality_metric'])} on {search['held_out_batches']} held-out "
        f"batches). Chosen: drop {len(chosen.get('drop', []))} block(s) "
        f"{html.escape(str(chosen.get('drop', [])))}, {chosen.get('precision', '')}.</p>"
        f"{_task(search)}"
        f"<h2>Pareto frontier (quality loss vs latency)</h2>"
        f"{_plot(search['candidates'], search['pareto'], search['bound']['max_drop'])}"
        "<h2>Candidates</h2><table><tr><th>dropped</th><th>precision</th><th>fp32 kept</th>"
        "<th>quality loss</th><th>measured on</th><th>p50 ms</th><th>MiB</th></tr>"
        f"{rows}</table>{_layers(search)}</body></html>")
    return page
