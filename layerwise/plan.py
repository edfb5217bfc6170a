"""The plan search wired to real parts: compiler/plan decides (depth by bisection, width,
precision, the Pareto frontier); this module hands it the ranking (the ensemble importance of
the auto method set), the cheap structural quality (the shrunk IR run in torch on the
held-out split) and the measurement of a candidate (its artifact built, verified, run on the
held-out split by the target's runtime and timed here, on a device agent, or predicted for a
device profile).

Quality is label-free fidelity to the original model on the held-out split: top-1
agreement for classifiers, mean cosine of the outputs otherwise. `max_drop` is a fraction.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from layerwise.compiler.plan import Bounds, Candidate, NoPlanError, quality, split
from layerwise.compiler.plan import run_search as search_plan

__all__ = ["NoPlanError", "Search", "quality", "run_search", "split"]


@dataclass
class Search:
    """State of one search: the lifted IR, its data splits and the target's options."""

    ir: object
    source: object
    target: str
    max_drop: float
    max_latency_ms: float | None
    max_size_mb: float | None
    analysis_batches: list
    held: list
    progress: object
    classify: bool = False
    reference: list = field(default_factory=list)
    remote: str | None = None  # a device agent's URL: latency measured there
    token_file: str | None = None
    device: str | None = None  # a device profile: latency predicted for it (unless remote)
    shrink: object = None  # (drop list, prune ratio) -> IR (healed when asked)
    prune_ratios: tuple[float, ...] = ()  # pruning tried after the depth, largest first
    _shrunk: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classify = self.ir.meta.get("task") == "classification"
        self.reference = self._run_torch(self.ir)

    def _feeds(self) -> list[dict[str, torch.Tensor]]:
        return [b.inputs for b in self.held]

    def _run_torch(self, ir) -> list[np.ndarray]:
        outs = [ir.run(f)[0].numpy() for f in self._feeds()]
        return [np.concatenate(outs)]

    def shrunk(self, drop: list[str], prune: float | None = None):
        """The IR with `drop` removed and `prune` of its channels pruned (healed when the
        search heals), built once per plan."""
        key = (tuple(drop), prune)
        if key not in self._shrunk:
            if self.shrink is not None:
                self._shrunk[key] = self.shrink(list(drop), prune)
            else:
                from layerwise.compiler.passes.drop_layers import drop_layers

                self._shrunk[key] = drop_layers(self.ir, list(drop)) if drop else self.ir
        return self._shrunk[key]

    def torch_quality(self, drop: list[str], prune: float | None = None) -> float:
        return quality(self._run_torch(self.shrunk(drop, prune)), self.reference,
                       self.classify)

    def ranking(self) -> list[str]:
        """Droppable blocks, least important first (ensemble of the auto method set)."""
        from layerwise.analysis import analyze

        self.progress("scoring block importance")
        res = analyze(self.ir, self.analysis_batches, "auto")
        droppable = set(res["droppable"])
        self.importance = res
        return [p for p in reversed(res["ranking"]) if p in droppable]

    def measure(self, cand: Candidate, build) -> Candidate:
        """Build cand's artifact (build(cand, out_dir) -> manifest), then measure its quality
        on the held-out split and its latency with the target's runtime."""
        from layerwise.runtime import open_runner, profile

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "b"
            manifest = build(cand, out)
            runner = open_runner(self.target, out / manifest["model"]["file"])
            outs = [np.concatenate([runner.run({k: v.numpy() for k, v in f.items()})[0]
                                    for f in self._feeds()])]
            cand.quality = quality(outs, self.reference, self.classify)
            cand.measured_on = manifest["verification"]["runtime"]
            if self.remote:
                from layerwise.runtime.remote import remote_profile

                prof = remote_profile(out, self.remote, self.token_file, runs=30, warmup=5)
                cand.latency_on = f"agent {self.remote} ({prof['remote']['host']})"
            elif self.device and self.device != "host":  # not at hand: the roofline model
                from layerwise.devices import predict

                pred = predict(self.shrunk(cand.drop, cand.prune), self.device,
                               precision=cand.precision if cand.precision in ("fp32", "fp16",
                                                                              "int8") else None)
                prof = {"latency_ms": {"p50": pred["total_ms"]}}
                cand.latency_on = f"predicted for {self.device} ({pred['basis']})"
            else:
                prof = profile(out, runs=30, warmup=5)
                cand.latency_on = "this machine"
            cand.latency_ms = prof["latency_ms"]["p50"]
            cand.size_bytes = manifest["sizes"]["model_bytes"]
        return cand


def run_search(s: Search, build, int8: bool, others: tuple[str, ...] = ()
               ) -> tuple[Candidate, dict]:
    """Run compiler/plan's search over `s` (build(cand, out_dir) -> manifest makes a
    candidate's artifact); returns the chosen candidate and the search record."""
    order = s.ranking()
    bounds = Bounds(s.max_drop, s.max_latency_ms, s.max_size_mb)
    best, record = search_plan(order, s.torch_quality, lambda c: s.measure(c, build), bounds,
                               prune_ratios=s.prune_ratios, int8=int8, others=others,
                               progress=s.progress)
    record.update({"quality_metric": "top-1 agreement" if s.classify else "mean cosine",
                   "held_out_batches": len(s.held),
                   "importance_methods": s.importance.get("methods", [])})
    return best, record
