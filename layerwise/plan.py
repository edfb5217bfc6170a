"""The plan search: how many blocks to drop and which precision, against a quality bound.

Depth: blocks are dropped in ensemble-importance order (least important first) and the
largest count whose quality loss stays within `max_drop` is found by bisection on a
held-out split (the design notes' DynamicCompressionStrategy). Precision: INT8 of that
depth is tried on the target's own runtime; when it misses the bound, the most important
blocks are kept in fp32 one at a time (mixed precision by importance). Every candidate that
reaches an artifact is profiled with the target's runtime; the Pareto frontier (quality,
latency, size) and the chosen plan go into the manifest.

Quality is label-free fidelity to the original model on the held-out split: top-1
agreement for classifiers, mean cosine of the outputs otherwise. `max_drop` is a fraction.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from layerwise.base.errors import LayerwiseError


class NoPlanError(LayerwiseError):
    """No candidate met the bounds; the message names the best one and the miss."""


@dataclass
class Candidate:
    drop: list[str]
    precision: str = "fp32"
    keep_fp32: list[str] = field(default_factory=list)
    quality: float = float("nan")
    latency_ms: float | None = None
    size_bytes: int | None = None
    measured_on: str = "torch"
    latency_on: str | None = None
    prune: float | None = None

    def to_json(self) -> dict:
        return {"drop": self.drop, "prune": self.prune, "precision": self.precision,
                "keep_fp32": self.keep_fp32,
                "quality": self.quality, "quality_drop": 1.0 - self.quality,
                "latency_ms": self.latency_ms, "size_bytes": self.size_bytes,
                "quality_measured_on": self.measured_on, "latency_measured_on": self.latency_on}


def quality(outputs: list[np.ndarray], reference: list[np.ndarray], classify: bool) -> float:
    """Agreement of the top-1 class (classifiers) or mean cosine (else) with the reference."""
    o = np.asarray(outputs[0], np.float64).reshape(len(outputs[0]), -1)
    r = np.asarray(reference[0], np.float64).reshape(len(reference[0]), -1)
    if classify:
        return float((o.argmax(1) == r.argmax(1)).mean())
    num = (o * r).sum(1)
    den = np.linalg.norm(o, axis=1) * np.linalg.norm(r, axis=1)
    return float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))


def split(batches: list, holdout: float = 0.5) -> tuple[list, list]:
    """Alternate batches into (analysis/calibration, held-out) so both see every source."""
    if len(batches) < 2:
        raise LayerwiseError("the plan search needs at least 2 batches of data (one to analyse "
                             "and calibrate, one held out); pass more --data")
    step = max(2, round(1 / holdout))
    held = [b for i, b in enumerate(batches) if i % step == step - 1]
    return [b for i, b in enumerate(batches) if i % step != step - 1], held


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
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
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

    def width(self, drop: list[str]) -> float | None:
        """The largest prune ratio (of `prune_ratios`) whose quality loss, with `drop`,
        stays within max_drop; None when none does or the model has nothing to prune."""
        for ratio in sorted(self.prune_ratios, reverse=True):
            self.progress(f"trying to prune {ratio:.0%} of the channels")
            try:
                q = self.torch_quality(drop, ratio)
            except LayerwiseError as e:
                self.notes.append(f"prune {ratio}: {e}")
                return None
            self.candidates.append(Candidate(list(drop), prune=ratio, quality=q))
            if 1.0 - q <= self.max_drop:
                return ratio
        return None

    def ranking(self) -> list[str]:
        """Droppable blocks, least important first (ensemble of the auto method set)."""
        from layerwise.analysis import analyze

        self.progress("scoring block importance")
        res = analyze(self.ir, self.analysis_batches, "auto")
        droppable = set(res["droppable"])
        self.importance = res
        return [p for p in reversed(res["ranking"]) if p in droppable]

    def depth(self, order: list[str]) -> int:
        """Largest k such that dropping order[:k] loses at most max_drop (bisection)."""
        lo, hi = 0, len(order) - 1  # never drop every block
        while lo < hi:
            mid = (lo + hi + 1) // 2
            self.progress(f"trying to drop {mid} block(s)")
            q = self.torch_quality(order[:mid])
            self.candidates.append(Candidate(order[:mid], quality=q))
            if 1.0 - q <= self.max_drop:
                lo = mid
            else:
                hi = mid - 1
        return lo

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
        self.candidates.append(cand)
        return cand

    def fits(self, c: Candidate) -> bool:
        if not 1.0 - c.quality <= self.max_drop:
            return False
        if self.max_latency_ms is not None and (c.latency_ms is None
                                                or c.latency_ms > self.max_latency_ms):
            return False
        return self.max_size_mb is None or (c.size_bytes is not None
                                            and c.size_bytes <= self.max_size_mb * 2**20)


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """Measured candidates no other beats on quality, latency and size at once."""
    measured = [c for c in cands if c.latency_ms is not None]

    def dominated(a: Candidate) -> bool:
        return any(b is not a and b.quality >= a.quality and b.latency_ms <= a.latency_ms
                   and b.size_bytes <= a.size_bytes and (b.quality > a.quality or
                                                         b.latency_ms < a.latency_ms or
                                                         b.size_bytes < a.size_bytes)
                   for b in measured)

    return sorted((c for c in measured if not dominated(c)), key=lambda c: c.latency_ms)


def run_search(s: Search, build, int8: bool, others: tuple[str, ...] = ()
               ) -> tuple[Candidate, dict]:
    """Search depth, width, then precision: static INT8 (keeping the most important blocks
    in fp32 until the bound holds), then each of `others` (e.g. int8-dynamic for
    transformers). Returns the chosen candidate and the search record."""
    t0 = time.perf_counter()
    order = s.ranking()
    k = s.depth(order)
    ratio = s.width(order[:k]) if s.prune_ratios else None
    s.progress(f"measuring fp32 with {k} block(s) dropped" +
               (f", {ratio:.0%} pruned" if ratio else ""))
    chosen = [s.measure(Candidate(order[:k], prune=ratio), build)]
    if int8:
        keep: list[str] = []
        important = [b for b in reversed(order) if b not in order[:k]]
        for attempt in range(3):
            s.progress(f"measuring int8 (fp32 kept: {len(keep)} block(s))")
            c = s.measure(Candidate(order[:k], "int8", list(keep), prune=ratio), build)
            chosen.append(c)
            if s.fits(c) or attempt == 2 or not important:
                break
            keep.append(important.pop(0))
    for precision in others:
        s.progress(f"measuring {precision}")
        chosen.append(s.measure(Candidate(order[:k], precision, prune=ratio), build))
    fitting = [c for c in chosen if s.fits(c)]
    record = {
        "bound": {"max_drop": s.max_drop, "max_latency_ms": s.max_latency_ms,
                  "max_size_mb": s.max_size_mb},
        "quality_metric": "top-1 agreement" if s.classify else "mean cosine",
        "held_out_batches": len(s.held),
        "drop_order": order,
        "importance_methods": s.importance.get("methods", []),
        "prune_ratios_tried": list(s.prune_ratios),
        "notes": s.notes,
        "candidates": [c.to_json() for c in s.candidates],
        "pareto": [c.to_json() for c in pareto(s.candidates)],
        "seconds": time.perf_counter() - t0,
    }
    if not fitting:
        best = max(chosen, key=lambda c: (c.quality, -(c.latency_ms or 0)))
        miss = (1.0 - best.quality) - s.max_drop
        raise NoPlanError(
            f"no plan meets the bounds: the best ({len(best.drop)} block(s) dropped, "
            f"{best.precision}) loses {100 * (1 - best.quality):.2f}% quality "
            f"({100 * max(miss, 0):.2f} points over --max-drop), latency "
            f"{best.latency_ms:.2f} ms, size {best.size_bytes / 2**20:.1f} MiB; loosen a bound")
    best = min(fitting, key=lambda c: c.latency_ms)
    record["chosen"] = best.to_json()
    return best, record
