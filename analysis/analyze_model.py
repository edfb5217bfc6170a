"""The entry point: `analyze(ir, batches, methods=...)` -> scores per block, per method, the
ensemble, and each method's measured cost in forward-pass equivalents."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import torch

from layerwise.analysis.execution import Batch, Context, run_baseline, run_shared
from layerwise.analysis.ensemble import aggregate
from layerwise.analysis.methods import METHODS, MethodError, get_method
from layerwise.analysis.select import BACKWARD, MEASURED, PRIORS, model_kind, select_methods
from layerwise.analysis.tasks import get_task
from layerwise.base.errors import LayerwiseError
from layerwise.compiler.ir import IR

DEFAULT_BUDGET = 3.0 * (1.0 + BACKWARD)  # three forward+backward passes


def as_batches(batches: Iterable | None, labels: Any = None) -> list[Batch]:
    """Batches from dicts of named tensors (a "labels" key is taken as labels), Batch values,
    or (inputs, labels) pairs; `labels` (a tensor over all samples, or a list per batch)
    overrides."""
    out: list[Batch] = []
    for b in batches or []:
        if isinstance(b, Batch):
            out.append(b)
        elif isinstance(b, dict):
            inputs = {k: v for k, v in b.items() if k != "labels"}
            out.append(Batch(inputs, b.get("labels")))
        elif isinstance(b, (tuple, list)) and len(b) == 2 and isinstance(b[0], dict):
            out.append(Batch(dict(b[0]), b[1]))
        else:
            raise LayerwiseError(f"cannot read a batch of type {type(b).__name__}: give dicts "
                                 "of named input tensors (optionally with 'labels')")
    if labels is not None:
        if isinstance(labels, torch.Tensor):
            sizes = [b.size for b in out]
            if labels.shape[0] != sum(sizes):
                raise LayerwiseError(f"{labels.shape[0]} labels for {sum(sizes)} samples; give "
                                     "one label per sample")
            labels = list(labels.split(sizes))
        out = [Batch(b.inputs, y) for b, y in zip(out, labels)]
    return out


def analyze(ir: IR, batches: Iterable | None = None, methods: str | list[str] = "auto", *,
            task: str | None = None, labels: Any = None, budget: float | None = None,
            history: list[dict] | None = None, seed: int = 0,
            options: dict[str, dict] | None = None, distributed: bool = False) -> dict:
    """Score every block of `ir` with the chosen methods and their ensemble.

    `methods`: a list of names, "all", or "auto" (the selector picks within `budget`
    forward-pass equivalents, default three forward+backward passes). `task`: a task adapter
    name (default: the IR's task when labels are given, else fidelity to the model's own
    outputs). `options`: per-method constructor options. `history`: analysis records of
    other models (earlier results' "history_record" dicts) for meta_learning. Assumes
    batches fit the IR's inputs.
    `distributed`: run data-parallel under torchrun (analysis.distributed): every process
    passes the same batches and keeps batch i when i % world == its rank; sums over samples and
    the shared accumulators are reduced across processes, so every rank returns the scores of
    the single-process run (within float rounding). Only rank 0 records history.
    """
    data = as_batches(batches, labels)
    has_labels = any(b.labels is not None for b in data)
    task_name = task or (_ir_task(ir) if has_labels else "fidelity")
    adapter = get_task(task_name)
    if adapter.needs_labels and not has_labels:
        if task_name.startswith("language") and data and "input_ids" in data[0].inputs:
            data = [Batch(b.inputs, b.inputs["input_ids"]) for b in data]
            has_labels = True
        else:
            raise LayerwiseError(f"task {task_name} needs labels; pass labels=")
    n_samples = sum(b.size for b in data)
    shard = _shard(data) if distributed else None
    local = data if shard is None else [data[i] for i in shard.indices]
    ctx = Context.build(ir, local, adapter, {"history": history}, seed, shard=shard)
    selection = None
    if methods == "auto":
        selection = select_methods(
            model_kind(ir), adapter.name, n_samples,
            DEFAULT_BUDGET if budget is None else budget, len(ctx.sites),
            has_labels=has_labels, has_history=_has_history(history))
        names = selection.methods
    elif methods == "all":
        names = list(METHODS)
    else:
        names = [methods] if isinstance(methods, str) else list(methods)
    strict = methods not in ("auto", "all")
    instances = {n: get_method(n, **(options or {}).get(n, {})) for n in names}
    skipped: dict[str, str] = {}
    results = {}
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()
    if data:
        run_baseline(ctx)
    shared = {}
    for n, m in instances.items():
        if m.info.mode != "static" and not data:
            _skip(skipped, n, f"{n} needs data: pass batches", strict)
        elif m.info.mode == "shared":
            try:
                m.requests(ctx)
                shared[n] = m
            except MethodError as e:
                _skip(skipped, n, str(e), strict)
    if shared:
        res, secs = run_shared(ctx, shared)
        results.update(res)
        seconds.update(secs)
    for n, m in instances.items():
        if m.info.mode == "shared" or n in skipped:
            continue
        t0 = time.perf_counter()
        try:
            results[n] = m.run(ctx)
        except MethodError as e:
            _skip(skipped, n, str(e), strict)
            continue
        seconds[n] = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    unit = ctx.forward_seconds or math.nan
    paths = ctx.paths
    scores = {n: {p: _num(r.scores.get(p, math.nan)) for p in paths} for n, r in results.items()}
    ensemble, weights = aggregate(scores, paths, {k: v[0] for k, v in PRIORS.items()},
                                  anchors=MEASURED)
    ranking = sorted((p for p in paths if not math.isnan(ensemble[p])),
                     key=lambda p: -ensemble[p])
    cost = {n: {"seconds": seconds.get(n, 0.0),
                "forward_equivalents": seconds.get(n, 0.0) / unit,
                "declared": instances[n].info.cost(len(paths), BACKWARD)} for n in results}
    baseline = _last_collective(ctx) if distributed else ctx.baseline
    history_record = None
    if data and (shard is None or shard.rank == 0):  # data-free scores teach meta_learning nothing
        from layerwise.analysis.records import make_record

        target = "layer_ablation" if "layer_ablation" in scores else "ensemble"
        history_record = make_record(ctx, scores.get(target, ensemble), target)
    return {
        "blocks": paths,
        "droppable": [s.path for s in ctx.sites if s.droppable],
        "task": adapter.name,
        "samples": n_samples,
        "methods": list(results),
        "scores": scores,
        "ensemble": ensemble,
        "ensemble_weights": weights,
        "ranking": ranking,
        "per_block": {p: {**{n: scores[n][p] for n in scores}, "ensemble": ensemble[p]}
                      for p in paths},
        "detail": {n: r.detail for n, r in results.items()},
        "cost": cost,
        "total_cost": {"seconds": total, "forward_equivalents": total / unit,
                       "forward_seconds": ctx.forward_seconds,
                       "shared_forward_seconds": seconds.get("_shared_forward", 0.0),
                       "shared_backward_seconds": seconds.get("_shared_backward", 0.0)},
        "selection": None if selection is None else {
            "methods": selection.methods, "reasons": selection.reasons,
            "estimated_cost": selection.estimated_cost},
        "skipped": skipped,
        "metrics": adapter.metrics(_cat(baseline, 0), _cat(baseline, 0),
                                   _cat_labels(data)) if data else {},
        "history_record": history_record,
        **({"processes": shard.world} if shard is not None else {}),
    }


def _shard(data: list[Batch]):
    """This process's Shard of `data` under torchrun (None in a world of one)."""
    from layerwise.analysis.distributed import Shard, init_from_env

    rank, world = init_from_env()
    return Shard.of([b.size for b in data], rank, world) if world > 1 and data else None


def _last_collective(ctx: Context) -> list[list[torch.Tensor]]:
    """Every rank's baseline outputs in batch order (for the task metrics); then leave the
    process group if init_from_env made it."""
    from layerwise.analysis.distributed import finish

    baseline = ctx.baseline if ctx.shard is None else ctx.shard.gather_batches(ctx.baseline)
    finish()
    return baseline


def _skip(skipped: dict, name: str, why: str, strict: bool) -> None:
    if strict:
        raise MethodError(why)
    skipped[name] = why


def _num(v) -> float:
    return float(v) if v is not None else math.nan


def _ir_task(ir: IR) -> str:
    t = ir.meta.get("task")
    return t if t in ("classification", "language-modeling", "recommendation") else "fidelity"


def _has_history(history: list[dict] | None) -> bool:
    return bool(history)


def _cat(outputs: list[list[torch.Tensor]], _dim: int) -> list[torch.Tensor]:
    if not outputs:
        return []
    return [torch.cat([o[i] for o in outputs]) for i in range(len(outputs[0]))]


def _cat_labels(data: list[Batch]):
    ys = [b.labels for b in data]
    return torch.cat(ys) if ys and all(y is not None for y in ys) else None
