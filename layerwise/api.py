"""Public API: `inspect`, `analyze`, `compile` (here), `profile` and `predict`
(layerwise.latency) — the CLI is a thin layer over these."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from layerwise.base.errors import LayerwiseError
from layerwise.latency import predict, profile
from layerwise.options import AnalyzeOptions, CompileOptions, ProfileOptions
from layerwise.record import record_run

Progress = Callable[[str], None]
# prune ratios the plan search tries after choosing the depth (largest first) unless --prune
SEARCH_PRUNE_RATIOS = (0.5, 0.25, 0.125)


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
    top = [layer for layer in ir.layers if layer.depth == 1]
    total = sum(layer.flops for layer in top) or 1
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

    With `max_drop`, first search the plan (blocks to drop, precision) that meets the bounds
    on held-out data. The bundle appears at `options.out` only if verification passes;
    returns its manifest.
    """
    from layerwise.compiler.frontend import lift as lift_source
    from layerwise.targets import get_target
    from layerwise.targets.bundle import BundleWriter

    opts = options or CompileOptions()
    if not opts.out:
        raise LayerwiseError("compile needs --out DIR (the bundle directory to write)")
    opts = _resolve_device(opts)
    target = get_target(opts.target)
    if opts.precision not in target.INFO.precisions:
        raise LayerwiseError(f"target {opts.target} offers {', '.join(target.INFO.precisions)}, "
                             f"not {opts.precision}")
    if opts.remote is not None or opts.token_file is not None:
        from layerwise.runtime.remote import agent_info, check_remote_options

        if opts.max_drop is None:
            raise LayerwiseError("--remote on compile measures the plan search's candidates; "
                                 "add --max-drop (or profile a bundle with `profile --remote`)")
        check_remote_options(opts.remote, opts.token_file, None)
        agent_info(opts.remote, opts.token_file)  # unreachable or refused: before any work
    if opts.max_drop is not None and not opts.data:
        raise LayerwiseError("--max-drop needs --data (held-out inputs to measure quality on)")
    drop = [p.strip() for p in (opts.drop or "").split(",") if p.strip()]
    smaller = drop or opts.max_drop is not None or opts.prune
    if (opts.heal_steps and not (smaller and opts.data)) or opts.heal_steps < 0:
        raise LayerwiseError("--heal-steps heals a model made smaller: add --drop BLOCKS, "
                             "--prune or --max-drop, and --data (a positive step count)")
    if opts.prune_criterion not in (None, "l2") and opts.prune and not opts.data:
        raise LayerwiseError(f"--prune-criterion {opts.prune_criterion} scores channels on "
                             "data: add --data (or use l2, which needs none)")
    if drop and opts.max_drop is not None:
        raise LayerwiseError("give either --drop (your blocks) or --max-drop (the search "
                             "chooses), not both")
    BundleWriter(opts.out, force=opts.force)  # refuses an existing --out before any work
    t0 = time.perf_counter()
    progress(f"loading {spec}")
    source = load_source(spec, source_options)
    progress("exporting with torch.export")
    ir = lift_source(source)
    lift_s = time.perf_counter() - t0
    batches = _load_data(opts, ir, source, progress) if opts.data else []
    search = None
    precision = opts.precision
    keep = [p.strip() for p in (opts.keep_fp32 or "").split(",") if p.strip()]
    if opts.max_drop is not None:
        from layerwise.plan import Search, run_search, split

        analysis_part, held = split(batches)
        teacher: dict = {}  # the original's outputs on analysis_part, for every healing
        s = Search(ir, source, opts.target, _fraction(opts.max_drop), opts.max_latency_ms,
                   opts.max_size_mb, analysis_part, held, progress, remote=opts.remote,
                   token_file=opts.token_file, device=opts.device,
                   shrink=lambda drop, ratio: shrink(ir, drop, opts, analysis_part, progress,
                                                     prune=ratio, teacher=teacher),
                   prune_ratios=(opts.prune,) if opts.prune else SEARCH_PRUNE_RATIOS)

        def build(cand, out: Path) -> dict:
            return _build(spec, s.shrunk(cand.drop, cand.prune), target, opts, cand.precision,
                          cand.keep_fp32, analysis_part, out, True, progress,
                          {"lift_s": lift_s}, record=False)

        # transformers: dynamic INT8 quantizes their linears with per-input activation ranges
        attention = any(layer.kind == "attention" for layer in ir.layers)
        others = tuple(p for p in ("int8-dynamic",) if attention and p in target.INFO.precisions)
        best, search = run_search(s, build, "int8" in target.INFO.precisions, others)
        small, precision, keep = s.shrunk(best.drop, best.prune), best.precision, best.keep_fp32
        batches = analysis_part
    else:
        small = shrink(ir, drop, opts, batches, progress, prune=opts.prune)
    return _build(spec, small, target, opts, precision, keep, batches, Path(opts.out),
                  opts.force, progress, {"lift_s": lift_s}, search=search)


def shrink(ir, drop: list[str], opts: CompileOptions, batches: list, progress: Progress = _noop, *,
           prune: float | None = None, teacher: dict | None = None):
    """`ir` without the blocks in `drop`, with `prune` of its channels pruned and, with
    `opts.heal_steps`, healed by distillation from `ir` on `batches` (quality before and
    after, on those batches, in the pass record). `teacher`: a dict shared by the calls of
    one plan search, where the original model's outputs on `batches` are kept after the
    first heal (every candidate distils from the same outputs)."""
    if not drop and not prune:
        return ir
    small = ir
    if drop:
        from layerwise.compiler.passes.drop_layers import drop_layers

        progress(f"dropping {len(drop)} block(s)")
        small = drop_layers(ir, drop)
    if prune:
        from layerwise.compiler.passes.prune import prune as prune_pass

        criterion = opts.prune_criterion or ("activation" if batches else "l2")
        progress(f"pruning {prune:.0%} of the channels ({criterion})")
        small = prune_pass(small, prune, criterion, batches=[b.inputs for b in batches] or None)
    if not opts.heal_steps:
        return small
    from layerwise.compiler.passes.heal import heal
    from layerwise.plan import quality

    if not batches:
        raise LayerwiseError("--heal-steps needs --data (the inputs to distil on)")
    feeds = [b.inputs for b in batches]
    classify = ir.meta.get("task") == "classification"
    teacher = {} if teacher is None else teacher
    if "outputs" not in teacher:
        teacher["outputs"] = [ir.run(f)[0] for f in feeds]
    targets = teacher["outputs"]
    reference = [np.concatenate([t.numpy() for t in targets])]

    def evaluate(candidate) -> float:
        return quality([np.concatenate([candidate.run(f)[0].numpy() for f in feeds])],
                       reference, classify)

    progress(f"healing: {opts.heal_steps} distillation steps")
    return heal(small, ir, feeds, steps=opts.heal_steps, lr=opts.heal_lr, evaluate=evaluate,
                classify=classify, targets=targets)


def _build(spec, ir, target, opts, precision, keep, calibration, out: Path, force: bool,
           progress: Progress, timings: dict, search: dict | None = None,
           record: bool = True) -> dict:
    """Finish the plan on the shrunk IR (extra passes, legalize, quantize), emit, verify and
    write the bundle."""
    import copy

    from layerwise.base.recipe import LOSSY
    from layerwise.compiler.passes import run_passes
    from layerwise.targets.build import build_bundle
    from layerwise.targets.bundle import BundleWriter

    writer = BundleWriter(out, force=force)

    quantized = precision in LOSSY and precision in target.INFO.precisions
    tolerance = opts.tolerance or (0.5 if quantized else 1e-4)
    ir = dataclasses.replace(ir, annotations=copy.deepcopy(ir.annotations))
    extra = [p.strip() for p in (opts.passes or "").split(",") if p.strip()]
    ir = run_passes(ir, [*extra, *target.INFO.legalize])
    if quantized:
        _plan_int8(ir, calibration, opts.target, opts.calibration, keep, precision=precision,
                   device=opts.device)
    opts = dataclasses.replace(opts, precision=precision)
    pages = {}
    if search is not None:
        from layerwise.plan_report import plan_report

        pages["report.html"] = plan_report(search, spec)
    manifest = build_bundle(spec, ir, target, opts, writer, tolerance=tolerance,
                            progress=progress, timings=timings, search=search, pages=pages)
    if record:
        bundle = str(out.resolve())
        manifest["run_id"] = record_run("compile", {**manifest, "bundle": bundle}, opts.db)
    return manifest


def _fraction(text: str) -> float:
    """'1%' -> 0.01, '0.01' -> 0.01."""
    try:
        v = float(text[:-1]) / 100.0 if str(text).endswith("%") else float(text)
    except ValueError as e:
        raise LayerwiseError(f"--max-drop {text!r}: give a fraction (0.01) or a percent "
                             "(1%)") from e
    if not 0 <= v < 1:
        raise LayerwiseError(f"--max-drop {text!r} must lie in [0, 100%)")
    return v


def _resolve_device(opts: CompileOptions) -> CompileOptions:
    """Fill the target from --device (else onnx) and check the device runs the precision."""
    if not opts.device:
        return dataclasses.replace(opts, target=opts.target or "onnx")
    from layerwise.devices import load_device

    dev = load_device(opts.device)
    if opts.precision not in dev.precisions:
        raise LayerwiseError(f"device {dev.name} runs {', '.join(dev.precisions)}, not "
                             f"{opts.precision}: pass --precision "
                             f"{dev.precisions[-1] if dev.precisions else 'int8'}")
    if dev.quant.full_integer and opts.keep_fp32:
        raise LayerwiseError(f"device {dev.name} runs full-integer models only: --keep-fp32 "
                             "cannot apply there")
    return dataclasses.replace(opts, target=opts.target or dev.target)


def _load_data(opts, ir, source, progress: Progress) -> list:
    from layerwise.sources.data import load_batches

    progress(f"loading data {opts.data}")
    return load_batches(opts.data, ir, getattr(source, "tokenizer", None), batch_size=8)


def _plan_int8(ir, batches: list, target: str, calibration: str | None,
               keep: list[str], *, precision: str = "int8", device: str | None = None) -> None:
    """Annotate ir for `precision` (int8, int8-dynamic, int8-weight, int4-weight, fp16) with
    the target's recipe; static int8 is calibrated on `batches`."""
    from layerwise.compiler.passes.quantize import quantize
    from layerwise.targets import recipe_for

    if precision == "int8":
        if not batches:
            raise LayerwiseError("--precision int8 needs --data (calibration inputs: .npz, an "
                                 "image folder, a text file or module:factory)")
        ir.calibration = [{k: v[i:i + 1].numpy() for k, v in b.inputs.items()}
                          for b in batches for i in range(b.size)]
    recipe = recipe_for(target, precision)
    if device:  # the device's rules on top of the target's, the user's calibration on top
        from layerwise.devices import load_device

        recipe = dataclasses.replace(recipe, **dict(load_device(device).quant.overrides))
    if calibration:
        recipe = dataclasses.replace(recipe, calibration=calibration)
    quantize(ir, recipe, keep, precision)


__all__ = ["AnalyzeOptions", "CompileOptions", "ProfileOptions", "analyze", "compile",
           "inspect", "lift", "load_source", "predict", "profile"]
