"""Terminal rendering of API results (rich tables on stdout)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

_out = Console(highlight=False)
if not _out.is_terminal:  # piped output: do not squeeze tables into 80 columns
    _out = Console(highlight=False, width=160)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def layer_table(r: dict, depth: int | None = None) -> None:
    t = Table(title=f"{r['spec']} — {r['modality']}, {_si(r['params'])} params, "
              f"{_si(r['flops'])} FLOPs at batch {r['flops_batch']}")
    for col in ("layer", "type", "kind", "params", "FLOPs", "share"):
        t.add_column(col, justify="right" if col in ("params", "FLOPs", "share") else "left")
    for layer in r["layers"]:
        if depth is not None and layer["depth"] > depth:
            continue
        name = "  " * (layer["depth"] - 1) + layer["path"].rsplit(".", 1)[-1]
        kind = f"[bold]{layer['kind']}[/bold]" if layer["block"] else layer["kind"]
        t.add_row(name, layer["type"], kind, _si(layer["params"]), _si(layer["flops"]),
                  f"{100 * layer['flops_share']:.1f}%")
    _out.print(t)
    groups: dict[str, list[str]] = {}
    for b in r["blocks"]:
        groups.setdefault(b["group"], []).append(b["path"].rsplit(".", 1)[-1])
    for g, idx in groups.items():
        _out.print(f"blocks: {g}.[{', '.join(idx)}] ({len(idx)} residual units)")
    for note in r.get("notes", []):
        _out.print(f"note: {note}")


def compile_summary(m: dict, out: str) -> None:
    if "generation" in m:  # a generator (compile --task text-generation)
        return generator_summary(m, out)
    v, f = m["verification"], m["fidelity"]
    _out.print(f"[green]✓[/green] {m['spec']} → {m['target']} bundle at {out}")
    _out.print(f"  model {m['model']['file']}: {m['sizes']['model_bytes'] / 2**20:.1f} MiB, "
               f"{_si(m['sizes']['params'])} params")
    _out.print(f"  verified with {v['runtime']}: rel_err {v['rel_err']:.2e} "
               f"(max abs {v['max_abs_err']:.2e}, tolerance {v['tolerance']:.0e}); "
               + (f"vs original model rel_err {f['rel_err']:.2e}" if "rel_err" in f else
                  f"vs original model: {f.get('reason', 'not compared')}"))
    if "task" in v:
        _out.print(f"  {task_line(v['task'])}")
    ins = ", ".join(f"{i['name']}{i['shape']}" for i in m["inputs"])
    _out.print(f"  inputs: {ins}")
    d = m.get("device_ops")
    if d and d["outside_op_limits"]:
        _out.print(f"  [yellow]{d['device']}: {', '.join(d['outside_op_limits'])} outside its "
                   "op limits: they run on its host CPU, not the accelerator[/yellow]")
    elif d:
        _out.print(f"  {d['device']}: every op within its op limits")
    if "search" in m:
        search_table(m["search"])


def task_line(t: dict) -> str:
    """The task's own agreement figure (runtime/compare.task_agreement) in one line."""
    if "matched" in t:
        return (f"detections: {100 * t['matched']:.1f}% matched, box IoU {t['box_iou']:.4f} "
                f"({t['artifact_detections']} vs {t['reference_detections']} after host NMS)")
    return (f"masks: {100 * t['pixel_agreement']:.2f}% pixels agree, mean IoU "
            f"{t['mean_iou']:.4f}")


def generator_summary(m: dict, out: str) -> None:
    """A text-generation bundle: sizes, cache, verification by generation, the plan."""
    v, f, z, g = m["verification"], m["fidelity"], m["sizes"], m["generation"]
    _out.print(f"[green]✓[/green] {m['spec']} → {m['target']} generator ({m['precision']}) at "
               f"{out}")
    _out.print(f"  model {z['model_bytes'] / 2**20:.1f} MiB, {_si(z['params'])} params, "
               f"{g['layers']} of {m['layers']['count']} decoder blocks; KV cache "
               f"{z['cache_bytes_per_token'] / 1024:.1f} KiB per token"
               + (f" ({100 * z['cache_saved_fraction']:.0f}% less than the original)"
                  if z["cache_saved_fraction"] > 0 else ""))
    _out.print(f"  verified with {v['runtime']}: {v['tokens_checked']} greedy tokens, "
               f"{100 * v['token_agreement']:.0f}% the same as transformers; step logits "
               f"rel_err {v['rel_err']:.2e} (tolerance {v.get('tolerance', 0):.0e}); vs the "
               f"original model {100 * f['token_agreement']:.0f}% of free-running greedy tokens, "
               f"{100 * f['teacher_forced_agreement']:.0f}% of next-token choices")
    ppl = m["plan"].get("perplexity")
    for p in m["plan"]["passes"]:
        if p["name"] == "drop_blocks" and p["dropped"]:
            _out.print(f"  dropped {', '.join(p['dropped'])}")
        if p["name"] == "heal":
            _out.print(f"  healed {p['steps']} steps (KL on the logits): held-out perplexity "
                       f"{p['held_perplexity_before']:.2f} → {p['held_perplexity_after']:.2f}")
    if ppl:
        art = (f", the artifact in {ppl['artifact_runtime']} {ppl['artifact']:.2f}"
               if "artifact" in ppl else "")
        _out.print(f"  perplexity on {ppl['on']}: original {ppl['original']:.2f}, shrunk "
                   f"{ppl['shrunk_model']:.2f}{art}")
    _out.print(f"  run it: layerwise generate {out} --prompt \"...\"")


def search_table(s: dict) -> None:
    """The plan search's Pareto frontier, the chosen plan and, with --eval, its task metric."""
    t = Table(title=f"plan search: Pareto frontier ({s['quality_metric']}, bound "
                    f"{100 * s['bound']['max_drop']:.2f}%)")
    for col in ("dropped", "prune", "precision", "quality loss", "p50 ms", "MiB"):
        t.add_column(col, justify="left" if col == "dropped" else "right")
    chosen = s.get("chosen", {})
    for c in s.get("pareto", []):
        mark = " ◀ chosen" if (c["drop"], c["prune"], c["precision"]) == (
            chosen.get("drop"), chosen.get("prune"), chosen.get("precision")) else ""
        t.add_row(f"{len(c['drop'])} block(s){mark}", str(c["prune"] or "—"), c["precision"],
                  f"{100 * c['quality_drop']:.2f}%", f"{c['latency_ms']:.3f}",
                  f"{c['size_bytes'] / 2**20:.1f}")
    _out.print(t)
    task = s.get("task_metric")
    if task and chosen.get("task_metric"):
        ref, got = task["reference"], chosen["task_metric"]
        change = (f"{100 * (got['test'] / ref['test'] - 1):+.2f}%" if task.get("lower_is_better")
                  else f"{100 * (got['test'] - ref['test']):+.2f} points")
        _out.print(f"  {task['name']} on the held-back half of {task.get('source', '--eval')} "
                   f"({task['test_examples']} examples the search never saw): original "
                   f"{ref['test']:.4f}, chosen {got['test']:.4f} ({change})")


def profile_table(r: dict) -> None:
    if "decode_tokens_per_s" in r:  # a generator's profile
        return generator_profile(r)
    t = Table(title=f"{r['bundle']} — {r['runtime']}, batch {r['batch']}, {r['runs']} runs, "
              f"{r['threads']} threads")
    for col in ("engine", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "per s"):
        t.add_column(col, justify="left" if col == "engine" else "right")
    rows = [(r["target"] + " (" + r["runtime"] + ")", r["latency_ms"], r["throughput_per_s"])]
    if "baseline" in r:
        b = r["baseline"]
        rows.append((b["name"], b["latency_ms"], r["batch"] * 1000.0 / b["latency_ms"]["mean"]))
    for variant, lat in list(r.get("variants", {}).items())[1:]:
        name = f"{r['target']} {variant} ({lat.get('precision')})"
        rows.append((name, lat, r["batch"] * 1000.0 / lat["mean"]))
    for name, lat, tput in rows:
        t.add_row(name, *(f"{lat[k]:.3f}" for k in ("p50", "p90", "p99", "mean", "std")),
                  f"{tput:.1f}")
    _out.print(t)
    if "speedup_vs_baseline" in r:
        _out.print(f"speed-up vs {r['baseline']['name']} (p50): {r['speedup_vs_baseline']:.2f}×")
    _out.print(f"peak RSS {r['peak_rss_mb']:.0f} MiB")
    if r.get("power_mode"):
        _out.print(f"power mode {r['power_mode']} (CPU governor: {r.get('cpu_governor')})")
    for op in r.get("ops", [])[:15]:
        _out.print(f"  {op['op']:<24} {op['total_ms']:9.2f} ms  {op['calls']:6d} calls  "
                   f"{100 * op['share']:5.1f}%")


def generator_profile(r: dict) -> None:
    """A text-generation bundle's profile: TTFT, decode tokens/s, memory, per-block time."""
    tps = r["decode_tokens_per_s"]
    _out.print(f"{r['bundle']} — {r['runtime']}, {r['precision']}, {r['threads']} threads, "
               f"median of {r['runs']} generations")
    _out.print(f"time to first token ({r['prompt_len']}-token prompt): {r['ttft_ms']:.1f} ms")
    if tps:
        _out.print(f"decode: {tps:.1f} tokens/s ({r['new_tokens']} new tokens)")
    _out.print(f"memory: model {r['model_bytes'] / 2**20:.1f} MiB + KV cache "
               f"{r['cache_bytes'] / 2**20:.1f} MiB at {r['prompt_len'] + r['new_tokens']} "
               f"tokens; peak RSS {r['peak_rss_mb']:.0f} MiB")
    rows = r.get("per_layer") or []
    if rows:
        t = Table(title="decode time per block")
        for col in ("block", "ms / token", "share"):
            t.add_column(col, justify="left" if col == "block" else "right")
        for row in rows:
            t.add_row(row["layer"], f"{row['ms_per_token']:.3f}", f"{100 * row['share']:.1f}%")
        _out.print(t)


def runs_table(rows: list[dict]) -> None:
    t = Table(title="recorded runs (newest first)")
    for col in ("id", "time", "kind", "model", "target", "device", "p50 ms", "rel_err"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["id"]), r["time"], r["kind"], str(r["model"]), str(r["target"]),
                  str(r["device"]), "" if r["p50_ms"] is None else f"{r['p50_ms']:.3f}",
                  "" if r["rel_err"] is None else f"{r['rel_err']:.1e}")
    _out.print(t)


def leaderboard_table(rows: list[dict], metric: str) -> None:
    t = Table(title=f"leaderboard by {metric} (lower is better)")
    for col in ("#", "model", "target", "device", metric, "runs"):
        t.add_column(col)
    for i, r in enumerate(rows, 1):
        t.add_row(str(i), str(r["model"]), str(r["target"]), str(r["device"]),
                  f"{r[metric]:.4g}", str(r["runs"]))
    _out.print(t)


def importance_table(r: dict, out: str) -> None:
    blocks = r["blocks"]
    short = [".".join(b.split(".")[-2:]) for b in blocks]
    t = Table(title=f"{r['spec']} — block importance, higher = keep ({r['task']}, "
              f"{r['samples']} samples)")
    t.add_column("method")
    for s in short:
        t.add_column(s, justify="right")
    t.add_column("cost (fwd)", justify="right")
    for m in [*r["methods"], "ensemble"]:
        scores = r["ensemble"] if m == "ensemble" else r["scores"][m]
        cost = r["cost"].get(m, {}).get("forward_equivalents")
        t.add_row(m, *(f"{scores[b]:.3g}" for b in blocks),
                  "" if cost is None else f"{cost:.1f}")
    _out.print(t)
    _out.print("drop order (least important first): " + ", ".join(reversed(r["ranking"])))
    cost = r["total_cost"]["forward_equivalents"]
    _out.print(f"cost: {cost:.1f} forward-pass equivalents; wrote {out}/importance.json and "
               f"{out}/report.html")
    for name, why in r.get("skipped", {}).items():
        _out.print(f"skipped {name}: {why}")


def devices_table(r: dict) -> None:
    t = Table(title="device profiles")
    for col in ("name", "target", "precisions", "peak GOP/s", "GB/s", "memory GB", "INT8 recipe"):
        t.add_column(col)
    for d in r["devices"]:
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in d["peak_gops"].items())
        if d["measured"] and not d["calibrated"]:
            peaks = "measured on first `predict`"
        q = d["quant"]
        sym = "sym" if q.get("symmetric_activations") else "asym"
        grain = "per-channel" if q.get("per_channel") else "per-tensor"
        recipe = (f"{q.get('activation_dtype')} {sym} act, {grain} w, "
                  f"{q.get('calibration')}{', full-int' if q.get('full_integer') else ''}")
        t.add_row(d["name"], d["target"], ", ".join(d["precisions"]), peaks,
                  "-" if d["bandwidth_gbs"] is None else f"{d['bandwidth_gbs']:.1f}",
                  "-" if d["memory_gb"] is None else str(d["memory_gb"]), recipe)
    _out.print(t)


def prediction_table(r: dict) -> None:
    _out.print(f"{r['spec']} on {r['device']} ({r['target']}, {r['precision']}, batch "
               f"{r['batch']}): predicted {r['total_ms']:.3f} ms — {r['basis']}")
    t = Table()
    for col in ("layer", "ms", "share", "bound", "GFLOP"):
        t.add_column(col, justify="left" if col in ("layer", "bound") else "right")
    for row in sorted(r["layers"], key=lambda x: -x["ms"])[:20]:
        t.add_row(row["layer"], f"{row['ms']:.3f}", f"{100 * row['share']:.1f}%", row["bound"],
                  f"{row['flops'] / 1e9:.3f}")
    _out.print(t)
    for note in r["notes"]:
        _out.print(f"note: {note}")
