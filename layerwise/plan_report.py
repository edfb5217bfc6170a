"""report.html of a plan search: the candidates and their Pareto frontier (inline SVG)."""

from __future__ import annotations

import html
from pathlib import Path


def pareto_svg(cands: list[dict], frontier: list[dict], bound: float) -> str:
    """Quality loss against latency of the measured candidates, the frontier joined, the
    bound dashed (inline SVG)."""
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


def _heal(passes: list[dict], search: dict) -> str:
    """What the chosen plan's heal saw and what it kept, with its curve."""
    rec = next((p for p in passes if isinstance(p, dict) and p.get("name") == "heal"), None)
    if rec is None:
        return ""
    metric = html.escape(search.get("quality_metric", "fidelity"))
    text = (f"<h2>Healing</h2><p>The heal saw {rec.get('examples', '?')} examples of --data "
            f"({rec.get('batches', '?')} batches) for {rec.get('steps', '?')} steps "
            f"({rec.get('seconds', 0):.0f} s, {rec.get('matched_blocks', 0)} hidden states "
            f"matched, augmentation {'on' if rec.get('augment') else 'off'})")
    if rec.get("held_examples"):
        text += (f"; {rec['held_examples']} held-out examples of --data chose the student "
                 f"kept (step {rec.get('kept_step', '?')})")
    text += ".</p><ul>"
    if rec.get("quality_before") is not None:
        text += (f"<li>fidelity to the original on held-out --data: "
                 f"{rec['quality_before']:.4f} before, {rec['quality_after']:.4f} after</li>")
    chosen = search.get("chosen", {}).get("task_metric") or {}
    if chosen.get("test_fidelity") is not None:
        task = search.get("task_metric", {})
        text += (f"<li>on the held-back half of {html.escape(task.get('source', '--eval'))} "
                 f"({task.get('test_examples', '?')} examples neither the heal nor the "
                 f"search saw): fidelity {chosen['test_fidelity']:.4f}, "
                 f"{html.escape(task.get('name', ''))} {chosen['test']:.4f} (original "
                 f"{task['reference']['test']:.4f})</li>")
    return (f"{text}</ul><p>Fidelity: top-1 agreement with the original for a classifier, "
            f"else mean cosine; the search's own quality is {metric}.</p>"
            f"{_curve(rec.get('curve') or [])}")


def _curve(curve: list[dict]) -> str:
    if len(curve) < 2:
        return ""
    w, h, m = 560, 220, 40
    steps = [c["step"] for c in curve]
    ys = [c["loss"] for c in curve] + [c["held_loss"] for c in curve]
    top = max(ys) * 1.1 or 1.0

    span = max(steps[-1] - steps[0], 1)

    def line(key: str, colour: str) -> str:
        pts = " ".join(f"{m + (c['step'] - steps[0]) / span * (w - m - 10):.1f},"
                       f"{h - m - c[key] / top * (h - m - 10):.1f}" for c in curve)
        return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>'

    return (f'<svg width="{w}" height="{h}" role="img" aria-label="healing curve">'
            f'<line x1="{m}" y1="{h - m}" x2="{w - 10}" y2="{h - m}" stroke="#999"/>'
            f'<line x1="{m}" y1="10" x2="{m}" y2="{h - m}" stroke="#999"/>'
            f'{line("loss", "#3b6fb6")}{line("held_loss", "#c0392b")}'
            f'<text x="{w / 2}" y="{h - 10}" font-size="11" text-anchor="middle">step '
            f'({steps[0]}–{steps[-1]}); blue: training loss, red: held-out loss</text></svg>')


def plan_report(search: dict, spec: str, passes: list[dict] | None = None) -> str:
    """The search's report page as HTML (self-contained, no script); `passes`: the chosen
    plan's pass records (its heal, if any)."""
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
        f"{pareto_svg(search['candidates'], search['pareto'], search['bound']['max_drop'])}"
        "<h2>Candidates</h2><table><tr><th>dropped</th><th>precision</th><th>fp32 kept</th>"
        "<th>quality loss</th><th>measured on</th><th>p50 ms</th><th>MiB</th></tr>"
        f"{rows}</table>{_heal(passes or [], search)}{_layers(search)}</body></html>")
    return page
