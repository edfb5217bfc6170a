"""Public API: `inspect`, `analyze`, `compile` (here), `profile` and `predict`
(layerwise.latency) — the CLI is a thin layer over these."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from layerwise.base.errors import LayerwiseError
from layerwise.latency import predict, profile
from layerwise.options import AnalyzeOptions, CompileOptions, ProfileOptions
from layerwise.record import record_run

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def load_source(spec: str, source_options=None):
    """Resolve SPEC to a Source (module, example inputs, modality)."""
    from layerwise.sources import load_source as _load

    return _load(spec, source_options)


def lift(spec: str, source_options=None, progress: Progress = _noop):
    """SPEC -> IR (torch.export, Core ATen, layer table); torch is imported only here, so a
    runtime-only install can still profile."""
    from layerwise.sources import lift_spec

    return lift_spec(spec, source_options, progress)


def analyze(spec: str, options: AnalyzeOptions | None = None, source_options=None,
            progress: Progress = _noop) -> dict:
    """Score every block of SPEC with the chosen importance methods; write importance.json
    and report.html into options.out (atomically). Returns the importance dict."""
    import json

    from layerwise.analysis import analyze as run_analysis
    from layerwise.analysis.report import write_report
    from layerwise.base.outdir import AtomicDir, is_analysis
    from layerwise.compiler.frontend import lift as lift_source
    from layerwise.sources.data import load_batches

    opts = options or AnalyzeOptions()
    if not opts.out:
        raise LayerwiseError("analyze needs --out DIR (for importance.json and report.html)")
    # refuses an --out it must not replace, or cannot write, before any work
    target = AtomicDir(opts.out, opts.force, is_analysis, "an analyze output")
    if opts.distributed:  # refuse outside torchrun before any work
        from layerwise.analysis.distributed import init_from_env

        init_from_env()
    progress(f"loading {spec}")
    source = load_source(spec, source_options)
    progress("exporting with torch.export")
    ir = lift_source(source)
    batches = None
    if opts.data:
        progress(f"loading data {opts.data}")
        batches = load_batches(opts.data, ir, source.tokenizer, batch_size=opts.batch_size,
                               limit=opts.limit)
    methods = opts.methods if opts.methods in ("auto", "all") else [
        m.strip() for m in opts.methods.split(",") if m.strip()]
    history = None
    if opts.db != "none":  # meta_learning learns from the analyses recorded before
        from layerwise.runtime.history import HistoryError, analysis_records

        try:
            history = analysis_records(opts.db)
        except HistoryError:  # recording the run warns about it
            history = None
    progress("analysing")
    result = run_analysis(ir, batches, methods, task=opts.task, budget=opts.budget,
                          distributed=opts.distributed, history=history)
    result = {"spec": spec, "modality": ir.meta["modality"], **result}
    if opts.distributed:
        from layerwise.analysis.distributed import is_main

        if not is_main():  # rank 0 writes the directory and records the run
            return result
    with target:
        (target.dir / "importance.json").write_text(json.dumps(result, indent=1,
                                                               default=_plain))
        write_report(report_input(result), target.dir / "report.html")
        target.publish()
    result["run_id"] = record_run("analyze", {"spec": spec, "quality": {
        "ranking": result["ranking"], "ensemble": result["ensemble"]},
        "history_record": result.get("history_record")}, opts.db)
    return result


def report_input(result: dict) -> dict:
    """The analysis result in the shape report.html reads; ablation is the measured damage."""
    scores = result["scores"]
    return {
        "model": result.get("spec", ""),
        "layers": result["blocks"],
        "methods": {n: {"scores": s, "cost": result["cost"].get(n, {})}
                    for n, s in scores.items()},
        "ensemble": {"scores": result["ensemble"]},
        "measured_damage": scores.get("layer_ablation"),
    }


def _plain(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def inspect(spec: str, source_options=None, progress: Progress = _noop) -> dict:
    """The layer table of SPEC: every module with kind, params, FLOPs and share of FLOPs."""
    from layerwise.compiler.layers import blocks

    ir = lift(spec, source_options, progress)
    total = ir.flops or 1
    batch = next(iter(ir.example_inputs.values())).shape[0] if ir.example_inputs else 1
    return {
        "spec": spec,
        "modality": ir.meta["modality"],
        "task": ir.meta["task"],
        "params": ir.params,
        "flops": total,
        "flops_batch": int(batch),
        "inputs": ir.input_specs(),
        "outputs": ir.output_specs(),
        "notes": ir.meta["notes"],
        "layers": [
            {"path": layer.path, "type": layer.type, "kind": layer.kind, "depth": layer.depth,
             "params": layer.params, "flops": layer.flops, "flops_share": layer.flops / total,
             "block": layer.block}
            for layer in ir.layers
        ],
        "blocks": [{"path": b.path, "group": b.group, "params": b.params, "flops": b.flops}
                   for b in blocks(ir.layers)],
    }


def compile(spec: str, options: CompileOptions | None = None, source_options=None,
            progress: Progress = _noop) -> dict:
    """Lift SPEC, emit it for the target, verify with the target's runtime, write the bundle.

    With `max_drop`, first search the plan (blocks to drop, channels to prune, precision)
    that meets the bounds on held-out data. The bundle appears at `options.out` only if
    verification passes; returns its manifest.
    """
    from layerwise.compiler.frontend import lift as lift_source
    from layerwise.compiler.pipeline import Shrink, shrink
    from layerwise.finish import Choice, build
    from layerwise.options import check_compile, names, seconds
    from layerwise.targets.bundle import BundleWriter

    opts = check_compile(options or CompileOptions())
    BundleWriter(opts.out, force=opts.force)  # refuses an existing --out before any work
    t0 = time.perf_counter()
    progress(f"loading {spec}")
    source = load_source(spec, source_options)
    if opts.task == "text-generation":
        from layerwise.lm import compile_lm

        return compile_lm(spec, source, opts, progress, {"load_s": time.perf_counter() - t0})
    progress("exporting with torch.export")
    ir = lift_source(source)
    timings = {"lift_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    batches = _load_data(opts, ir, source, progress) if opts.data else []
    timings["data_s"] = time.perf_counter() - t1
    plan = Shrink(names(opts.drop), opts.prune, opts.prune_criterion, opts.heal_steps,
                  opts.heal_lr, seconds(opts.heal_budget), opts.heal_hidden, opts.heal_augment)
    choice, search = Choice(opts.precision, names(opts.keep_fp32)), None
    if opts.max_drop is None:
        small = shrink(ir, plan, batches, progress=progress)
    else:
        from layerwise.judge import make_judge
        from layerwise.plan import Search, run_search, split
        from layerwise.runtime.compare import agreement_for

        labelled = _load_data(opts, ir, source, progress, opts.eval) if opts.eval else None
        batches, held = split(batches)
        judge = make_judge(held, labelled, opts.metric,
                           ir.meta.get("task") == "classification", opts.confidence,
                           agree=agreement_for(ir.meta, ir.output_names))
        s = Search(spec, ir, opts, batches, judge, progress, shrink=plan, timings=timings,
                   started=t0)
        if opts.executor == "local":
            best, search = run_search(s)
        else:
            from layerwise.plan_ray import RayExecutor

            progress(f"starting the candidates' workers on {opts.executor}")
            with RayExecutor(s, opts.executor) as executor:
                best, search = run_search(s, executor)
        small = s.shrunk(best.drop, best.prune)
        choice = Choice(best.precision, tuple(best.keep_fp32))
    return build(spec, small, opts, choice, batches, out=Path(opts.out), force=opts.force,
                 progress=progress, timings=timings, search=search)


def _load_data(opts, ir, source, progress: Progress, spec: str | None = None) -> list:
    from layerwise.sources.data import load_batches

    spec = spec or opts.data
    progress(f"loading data {spec}")
    return load_batches(spec, ir, getattr(source, "tokenizer", None), batch_size=8)


__all__ = ["AnalyzeOptions", "CompileOptions", "ProfileOptions", "analyze", "compile",
           "inspect", "lift", "load_source", "predict", "profile"]
