"""The plan search wired to real parts: compiler/plan decides (depth by bisection, width,
precision, the Pareto frontier); this module hands it the ranking (the ensemble importance of
the auto method set), the cheap structural quality (the shrunk IR run in torch on the
held-out split) and the measurement of a candidate (its artifact built, verified, run on the
held-out split by the target's runtime and timed here, on a device agent, or predicted for a
device profile).

Quality comes from the judge (layerwise/judge.py): label-free fidelity to the original
model on the held-out split of --data, or the task metric on labelled --eval data.

The candidates are shrunk, built and measured here, one after another, unless `run_search`
is given an executor (layerwise/plan_ray.py: on Ray workers, side by side); a `Search` is
itself the in-process executor.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from layerwise.compiler.pipeline import Shrink, Teacher, shrink
from layerwise.compiler.plan import Bounds, Candidate, NoPlanError, quality, split
from layerwise.compiler.plan import run_search as search_plan
from layerwise.finish import Choice, build
from layerwise.judge import Judge
from layerwise.options import CompileOptions, fraction, seconds

__all__ = ["NoPlanError", "Search", "quality", "run_search", "split"]


# prune ratios the search tries after choosing the depth (largest first) unless --prune
SEARCH_PRUNE_RATIOS = (0.5, 0.25, 0.125)


@dataclass
class Search:
    """State of one search: the lifted IR, its data splits and the compile's options.

    `opts.max_drop` must already be checked (layerwise.options.check_compile); the candidates
    are shrunk by `shrink` (its drop and prune replaced per candidate, healed when it heals)
    and finished and measured with `opts`."""

    spec: str
    ir: object
    opts: CompileOptions
    analysis_batches: list
    judge: Judge
    progress: object
    shrink: Shrink = field(default_factory=Shrink)
    timings: dict = field(default_factory=dict)
    teacher: Teacher = field(default_factory=Teacher)
    order_basis: str = "ensemble importance"
    deadline: float | None = None  # perf_counter time past which the search stops searching
    started: float | None = None  # perf_counter time the compile started
    build_s: float = 0.0  # the last candidate's build (emit, verify, write), seconds
    _shrunk: dict = field(default_factory=dict)
    _measured: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        every = self.judge.every_output
        if "outputs" not in self.judge.reference:  # a worker's copy keeps the driver's
            self.judge.set_reference(lambda batches: _run_torch(self.ir, batches, every))

    @property
    def prune_ratios(self) -> tuple[float, ...]:
        return (self.opts.prune,) if self.opts.prune else SEARCH_PRUNE_RATIOS

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def bounds(self) -> Bounds:
        return Bounds(fraction(self.opts.max_drop), self.opts.max_latency_ms,
                      self.opts.max_size_mb)

    def ahead(self, plans: list, candidates: list[Candidate]) -> None:
        """In-process, nothing is started ahead: each plan is measured when asked for."""

    def executor_record(self) -> dict:
        return {"name": "local", "workers": 1}

    def remember(self, drop: list[str], prune: float | None, ir) -> None:
        """Take `ir` as the shrunk IR of (drop, prune) (built elsewhere, by a worker)."""
        self._shrunk[(tuple(drop), prune)] = ir

    def has_shrunk(self, drop: list[str], prune: float | None) -> bool:
        return (tuple(drop), prune) in self._shrunk

    def shrunk(self, drop: list[str], prune: float | None = None):
        """The IR with `drop` removed and `prune` of its channels pruned (healed when the
        search heals), built once per plan."""
        key = (tuple(drop), prune)
        if key not in self._shrunk:
            spec = replace(self.shrink, drop=tuple(drop), prune=prune)
            self._shrunk[key] = shrink(self.ir, spec, self.analysis_batches, self.teacher,
                                       self.progress)
        return self._shrunk[key]

    def torch_quality(self, drop: list[str], prune: float | None = None) -> float:
        return self.judge.quality(_run_torch(self.shrunk(drop, prune), self.judge.batches,
                                             self.judge.every_output))

    def ranking(self) -> list[str]:
        """Droppable blocks, least important first (ensemble of the auto method set)."""
        from layerwise.analysis import analyze

        self.progress("scoring block importance")
        res = analyze(self.ir, self.analysis_batches, "auto")
        droppable = set(res["droppable"])
        self.importance = res
        order = [p for p in reversed(res["ranking"]) if p in droppable]
        return self.task_order(order) if self.judge.metric is not None else order

    def task_order(self, order: list[str]) -> list[str]:
        """With a task metric: the blocks in greedy order of measured task damage on the
        deciding half of --eval (each step drops the block whose removal, with those already
        chosen, keeps the metric highest), until a step loses over three times the bound;
        the rest follow in `order` (the ensemble's)."""
        from layerwise.compiler.passes.drop_layers import DropLayersError, drop_layers

        self.progress("ranking blocks by measured task damage")
        limit = 1.0 - 3 * fraction(self.opts.max_drop)
        chosen: list[str] = []
        rest = list(order)
        while len(rest) > 1 and not self.past_deadline():
            scores = {}
            for p in rest:
                if self.past_deadline():
                    break
                try:
                    small = drop_layers(self.ir, [*chosen, p])
                except DropLayersError:
                    continue
                scores[p] = self.judge.point(_run_torch(small, self.judge.batches))
            if not scores or (len(scores) < len(rest) and self.past_deadline()):
                break  # a step cut short by the budget is not a measured choice
            best = max(rest, key=lambda p: scores.get(p, -np.inf))
            chosen.append(best)
            rest.remove(best)
            if scores[best] < limit:
                break
        self.order_basis = "measured task damage, greedy" + (
            f" for the first {len(chosen)}" if rest else "") + (
            " (search budget spent)" if self.past_deadline() else "")
        return chosen + rest

    def layer_table(self) -> list[dict]:
        """Every layer with a weighted op: its INT8 sensitivity (the output's relative error
        with only that layer in int8, on up to 4 analysis batches), its share of the FLOPs
        and its block's importance; most sensitive first."""
        from layerwise.analysis.quant_sensitivity import sensitivity

        self.progress("measuring each layer's int8 sensitivity")
        err = sensitivity(self.ir, [b.inputs for b in self.analysis_batches[:4]])
        total = self.ir.flops or 1
        by_path = {layer.path: layer for layer in self.ir.layers}
        blocks = dict(self.importance.get("ensemble", {}))
        rows = []
        for path, e in sorted(err.items(), key=lambda kv: -kv[1]):
            layer = by_path.get(path)
            block = next((b for b in blocks if path.startswith(b + ".")), None)
            rows.append({"layer": path, "int8_error": e,
                         "flops_share": layer.flops / total if layer else None,
                         "block": block, "block_importance": blocks.get(block)})
        return rows

    def measure(self, cand: Candidate) -> Candidate:
        """Build cand's artifact, then measure its quality on the held-out split and its
        latency with the target's runtime (or on the agent, or predicted for the device);
        once per plan (asked again, the candidate measured then)."""
        key = (tuple(cand.drop), cand.prune, cand.precision, tuple(cand.keep_fp32))
        if key not in self._measured:
            self._measured[key] = self._measure(cand)
        return self._measured[key]

    def _measure(self, cand: Candidate) -> Candidate:
        from layerwise.runtime import open_runner, profile

        remote, device = self.opts.remote, self.opts.device
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "b"
            t0 = time.perf_counter()
            manifest = build(self.spec, self.shrunk(cand.drop, cand.prune), self.opts,
                             Choice(cand.precision, tuple(cand.keep_fp32)),
                             self.analysis_batches, out=out, force=True, progress=self.progress,
                             timings=self.timings, record=False)
            self.build_s = time.perf_counter() - t0
            runner = open_runner(self.opts.target, out / manifest["model"]["file"])
            outs = _run_runner(runner, self.judge.batches, self.judge.every_output)
            cand.quality = self.judge.quality(outs)
            if self.judge.metric is not None:  # the chosen plan's figure on unseen data
                test = _run_runner(runner, self.judge.test)
                cand.metrics = {"decide": self.judge.score(outs, self.judge.batches),
                                "test": self.judge.score(test, self.judge.test),
                                "test_fidelity": self.judge.test_fidelity(test)}
            cand.measured_on = manifest["verification"]["runtime"]
            if remote:
                from layerwise.runtime.remote import remote_profile

                prof = remote_profile(out, remote, self.opts.token_file, runs=30, warmup=5)
                cand.latency_on = f"agent {remote} ({prof['remote']['host']})"
            elif device and device != "host":  # not at hand: the roofline model
                from layerwise.devices import predict

                pred = predict(self.shrunk(cand.drop, cand.prune), device,
                               precision=cand.precision if cand.precision in ("fp32", "fp16",
                                                                              "int8") else None)
                prof = {"latency_ms": {"p50": pred["total_ms"]}}
                cand.latency_on = f"predicted for {device} ({pred['basis']})"
            else:
                prof = profile(out, runs=30, warmup=5)
                cand.latency_on = "this machine"
            cand.latency_ms = prof["latency_ms"]["p50"]
            cand.latency_spread_ms = max(prof["latency_ms"].get("p90", cand.latency_ms)
                                         - cand.latency_ms, 0.0)
            cand.size_bytes = manifest["sizes"]["model_bytes"]
        return cand


def run_search(s: Search, executor=None) -> tuple[Candidate, dict]:
    """Run compiler/plan's search over `s`: depth, width, then int8 where the target has it
    (and dynamic int8 for a transformer's linears); returns the chosen candidate and the
    search record. `executor` (default `s`: here, in turn) shrinks, builds and measures the
    candidates: torch_quality, measure, ahead, layer_table (a list or a function returning
    it), shrunk, executor_record as on `Search`; the choice depends only on what it
    measures. The chosen plan's shrunk IR is left in `s` (`s.shrunk`)."""
    from layerwise.targets import get_target

    ex = executor or s

    precisions = get_target(s.opts.target).INFO.precisions
    attention = any(layer.kind == "attention" for layer in s.ir.layers)
    others = tuple(p for p in ("int8-dynamic",) if attention and p in precisions)
    t0 = time.perf_counter()
    budget = seconds(s.opts.search_budget, "--search-budget")
    # the plain compile at the target's default quantized precision is measured first and
    # stays a candidate: a search out of time still has what one compile gives
    s.progress("measuring the plain compile the search must beat")
    plain_precision = "int8" if "int8" in precisions else "fp32"
    first = Candidate([], plain_precision)
    ex.ahead([], [first])
    # the default budget needs its build time now; else an executor measures it while the
    # blocks are ranked and the search goes on (the search reads it through `measure`)
    if budget is None or ex is s:
        ex.measure(first)
    basis = "--search-budget"
    if budget is None:
        # the default: the whole compile within 3x that plain compile (lift, load --data,
        # build; the search's own data and the seed's measurement are not part of it),
        # ending in time for the chosen plan's own build
        plain = s.timings.get("lift_s", 0.0) + s.timings.get("data_s", 0.0) + s.build_s
        start = s.started if s.started is not None else t0 - s.timings.get("lift_s", 0.0)
        start += ex.executor_record().get("start_s", 0.0)  # starting the workers is left out
        budget = start + 3 * plain - s.build_s - t0
        basis = (f"default: the compile within 3x a plain {plain_precision} compile "
                 f"({plain:.1f} s: lift, data and its build of {s.build_s:.1f} s)")
    s.deadline = t0 + budget
    order = s.ranking()
    table = ex.layer_table() if "int8" in precisions and not s.past_deadline() else []
    rows = table if callable(table) else (lambda: table)
    best, record = search_plan(order, ex.torch_quality, ex.measure, s.bounds(),
                               prune_ratios=s.prune_ratios, int8="int8" in precisions,
                               others=others, progress=s.progress, budget_s=budget,
                               started=t0, keep_order=lambda: [r["layer"] for r in rows()]
                               or None, seed=(first,), ahead=ex.ahead)
    if ex is not s:
        s.remember(best.drop, best.prune, ex.shrunk(best.drop, best.prune))
    record.update({**s.judge.record(), "drop_order_basis": s.order_basis, "layers": rows(),
                   "wall_s": time.perf_counter() - t0, "budget_basis": basis,
                   "importance_methods": s.importance.get("methods", []),
                   "executor": ex.executor_record()})
    return best, record


def _run_torch(ir, batches: list, every: bool = False):
    """The IR's first output on `batches`, concatenated; `every`: the list of every output,
    each concatenated."""
    return _joined([[t.numpy() for t in ir.run(b.inputs)] for b in batches], every)


def _run_runner(runner, batches: list, every: bool = False):
    """The artifact's first output on `batches`, concatenated (`every`: as _run_torch)."""
    return _joined([runner.run({k: v.numpy() for k, v in b.inputs.items()})
                    for b in batches], every)


def _joined(runs: list[list[np.ndarray]], every: bool):
    if not every:
        return np.concatenate([r[0] for r in runs])
    return [np.concatenate(parts) for parts in zip(*runs)]
