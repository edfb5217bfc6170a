"""Shared execution: one plain forward for the baseline, one tapped forward and one backward
pass serving every shared method, then each intervention method's own gated passes.

Costs are measured in wall time and reported in forward-pass equivalents: seconds divided by
the time of one plain forward pass over the same data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from layerwise.analysis.methods import MethodError, Requests, Result
from layerwise.analysis.probe import Probe, Site, find_sites
from layerwise.analysis.tasks import Task
from layerwise.compiler.ir import IR


@dataclass(frozen=True, slots=True)
class Batch:
    """Named model inputs and optional labels for one batch."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass
class Observation:
    """What one batch of the shared passes gives the shared methods (all detached)."""

    index: int
    batch: Batch
    outputs: list[torch.Tensor]
    taps: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    param_grads: dict[str, torch.Tensor]
    params: dict[str, torch.Tensor]
    mask: torch.Tensor | None


@dataclass
class Context:
    """Everything a method may read. Methods never change the IR."""

    ir: IR
    sites: list[Site]
    batches: list[Batch]
    task: Task
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    baseline: list[list[torch.Tensor]] = field(default_factory=list)
    forward_seconds: float = 0.0
    shard: Any = None  # analysis.distributed.Shard when the batches are this rank's share
    _probes: dict[tuple, Probe] = field(default_factory=dict)

    @classmethod
    def build(cls, ir: IR, batches: list[Batch], task: Task, options: dict | None = None,
              seed: int = 0, *, shard: Any = None) -> Context:
        return cls(ir, find_sites(ir), list(batches), task, dict(options or {}), seed,
                   shard=shard)

    # ------------------------------------------------------------ helpers for methods

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.sites]

    def nan_scores(self) -> dict[str, float]:
        return {s.path: float("nan") for s in self.sites}

    def layer(self, path: str):
        return self.ir.layer(path)

    def mask(self, batch: Batch) -> torch.Tensor | None:
        """The (B, T) token mask of a text batch (its `attention_mask`), else None."""
        m = batch.inputs.get("attention_mask")
        return m.bool() if isinstance(m, torch.Tensor) and m.dim() == 2 else None

    def generator(self, index: int) -> torch.Generator:
        """The random generator of global batch `index` (see `global_index`)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + index)

    # ------------------------------------------------ data-parallel runs (analysis.distributed)

    def global_index(self, i: int) -> int:
        """The index in the whole data of local batch `i` (the same when not sharded)."""
        return i if self.shard is None else self.shard.indices[i]

    @property
    def batch_sizes(self) -> list[int]:
        """Samples in every batch of the whole data (every rank's, when sharded)."""
        return [b.size for b in self.batches] if self.shard is None else list(self.shard.sizes)

    def reduce_sum(self, *values):
        """Sums over every rank of floats / arrays / tensors (the values as they are when not
        sharded); one value gives one value back."""
        if self.shard is None:
            return values[0] if len(values) == 1 else values
        return self.shard.all_reduce_sum(*values)

    def share(self, limit: int | None = None) -> list[tuple[int, Batch]]:
        """(local index, batch) of this rank's batches among those a pass over the first
        `limit` samples reads (whole batches in order until `limit` is reached). Not sharded:
        every batch; the caller stops at `limit` itself."""
        if self.shard is None:
            return list(enumerate(self.batches))
        cut = self.shard.cutoff(limit)
        return [(i, b) for i, b in enumerate(self.batches) if self.shard.indices[i] < cut]

    def probe(self, taps: tuple[str, ...] = (), gates: bool = False, patch: bool = False
              ) -> Probe:
        key = (tuple(taps), gates, patch)
        if key not in self._probes:
            self._probes[key] = Probe(self.ir, self.sites, list(taps), gates, patch)
        return self._probes[key]

    def require_data(self, name: str) -> None:
        if not self.batches:
            raise MethodError(f"{name} needs data: pass batches (or --data) or choose a "
                              "data-free method such as spectral_analysis")

    def damage(self, probe: Probe, alpha: torch.Tensor | None = None,
               beta: torch.Tensor | None = None, limit: int | None = None) -> float:
        """Mean task damage of the gated probe vs the baseline outputs over the first `limit`
        samples (all by default). Assumes `baseline` is filled."""
        probe.set_gates(alpha, beta)
        total, count = 0.0, 0
        with torch.no_grad():
            for i, batch in self.share(limit):
                outs, _ = probe(batch.inputs)
                d = self.task.damage(outs, self.baseline[i], batch.labels)
                total += float(d.sum())
                count += d.numel()
                if self.shard is None and limit is not None and count >= limit:
                    break
        probe.set_gates()
        total, count = self.reduce_sum(total, count)
        return total / max(count, 1)


# ---------------------------------------------------------------- the passes


def run_baseline(ctx: Context) -> None:
    """Plain forward over all batches: baseline outputs and the unit of cost."""
    probe = ctx.probe()
    ctx.baseline = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in ctx.batches:
            outs, _ = probe(batch.inputs)
            ctx.baseline.append([o.detach() for o in outs])
    ctx.forward_seconds = max(time.perf_counter() - t0, 1e-9)


def run_shared(ctx: Context, methods: dict[str, Any]) -> tuple[dict[str, Result],
                                                                dict[str, float]]:
    """One tapped forward and (if any method needs it) one backward per batch for all
    `methods`; returns their results and the seconds each one was charged."""
    reqs = {name: m.requests(ctx) for name, m in methods.items()}
    taps = sorted(set().union(*(r.taps | r.grads for r in reqs.values())))
    grad_nodes = sorted(set().union(*(r.grads for r in reqs.values())))
    want_params = any(r.params for r in reqs.values())
    backward = bool(grad_nodes) or want_params
    probe = ctx.probe(tuple(taps))
    states = {name: m.start(ctx) for name, m in methods.items()}
    seconds = dict.fromkeys(methods, 0.0)
    t_fwd = t_bwd = 0.0
    params = dict(probe.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(backward)
        for i, batch in enumerate(ctx.batches):
            t0 = time.perf_counter()
            with torch.set_grad_enabled(backward):
                outs, tapped = probe(batch.inputs)
            t1 = time.perf_counter()
            grads: dict[str, torch.Tensor] = {}
            pgrads: dict[str, torch.Tensor] = {}
            if backward:
                loss = ctx.task.loss(outs, ctx.baseline[i] if ctx.baseline else outs,
                                     batch.labels, ctx.generator(ctx.global_index(i)))
                wrt_nodes = [tapped[n] for n in grad_nodes]
                wrt_params = list(params.values()) if want_params else []
                got = torch.autograd.grad(loss, wrt_nodes + wrt_params, allow_unused=True)
                for name, g, t in zip(grad_nodes, got, wrt_nodes):
                    grads[name] = torch.zeros_like(t) if g is None else g.detach()
                for name, g, p in zip(params, got[len(wrt_nodes):], wrt_params):
                    pgrads[name] = torch.zeros_like(p) if g is None else g.detach()
            t2 = time.perf_counter()
            t_fwd += t1 - t0
            t_bwd += t2 - t1
            obs = Observation(ctx.global_index(i), batch, [o.detach() for o in outs],
                              {k: v.detach() for k, v in tapped.items()}, grads, pgrads,
                              {k: v.detach() for k, v in params.items()}, ctx.mask(batch))
            with torch.no_grad():
                for name, m in methods.items():
                    t3 = time.perf_counter()
                    m.observe(states[name], obs, ctx)
                    seconds[name] += time.perf_counter() - t3
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    if ctx.shard is not None:  # every rank's accumulators, merged (lists in batch order)
        t3 = time.perf_counter()
        states = ctx.shard.merge_states(states)
        t_fwd += time.perf_counter() - t3
    results = {}
    for name, m in methods.items():
        t3 = time.perf_counter()
        results[name] = m.finish(states[name], ctx)
        seconds[name] += time.perf_counter() - t3
        uses_grad = bool(reqs[name].grads) or reqs[name].params
        seconds[name] += t_fwd + (t_bwd if uses_grad else 0.0)
    seconds["_shared_forward"] = t_fwd
    seconds["_shared_backward"] = t_bwd
    return results, seconds


def merge_states(a: dict, b: dict) -> dict:
    """Fold the accumulators of state `b` into state `a` (same keys); returns `a`."""
    for k, v in b.items():
        if k not in a:
            a[k] = v
        elif isinstance(v, dict):
            merge_states(a[k], v)
        elif isinstance(v, list):
            a[k].extend(v)
        else:
            a[k].merge(v)
    return a


def site_requests(ctx: Context, *, inputs: bool = True, outputs: bool = True,
                  grads_in: bool = False, grads_out: bool = False, params: bool = False
                  ) -> Requests:
    """Requests for droppable blocks' hidden-state inputs / outputs (and their gradients)."""
    ins = {s.hidden for s in ctx.sites if s.droppable}
    outs = {s.output for s in ctx.sites if s.droppable}
    taps = (ins if inputs else set()) | (outs if outputs else set())
    grads = (ins if grads_in else set()) | (outs if grads_out else set())
    return Requests(frozenset(taps), frozenset(grads), params)


def block_params(ctx: Context, path: str, named: dict[str, torch.Tensor]) -> list[str]:
    """Names of the parameters that belong to the block at `path`."""
    prefix = path + "."
    return [n for n in named if n.startswith(prefix)]


def nodes_in(ctx: Context, path: str, targets: set) -> list[str]:
    """Names of the block's tensor nodes whose op is one of `targets`, in graph order."""
    members = set(ctx.layer(path).nodes)
    return [n.name for n in ctx.ir.program.graph.nodes
            if n.name in members and n.target in targets
            and isinstance(n.meta.get("val"), torch.Tensor)]
