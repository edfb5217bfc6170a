"""One plan the search tries (blocks dropped, channels pruned, precision, fp32 layers) with
what was measured of it, and the bounds a plan must meet."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Candidate:
    """A plan and, once measured, its quality (fidelity to the original model), latency and
    size; `measured_on` / `latency_on` say where."""

    drop: list[str]
    precision: str = "fp32"
    keep_fp32: list[str] = field(default_factory=list)
    quality: float = float("nan")
    latency_ms: float | None = None
    # how far the p90 lies above the p50: latencies closer than this are a tie
    latency_spread_ms: float = 0.0
    size_bytes: int | None = None
    measured_on: str = "torch"
    latency_on: str | None = None
    prune: float | None = None
    # the task metric (with --eval) on the deciding split and on the held-back test split
    metrics: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"drop": self.drop, "prune": self.prune, "precision": self.precision,
                "keep_fp32": self.keep_fp32,
                "quality": self.quality, "quality_drop": 1.0 - self.quality,
                "latency_ms": self.latency_ms,
                "latency_spread_ms": self.latency_spread_ms, "size_bytes": self.size_bytes,
                "quality_measured_on": self.measured_on, "latency_measured_on": self.latency_on,
                **({"task_metric": self.metrics} if self.metrics else {})}


@dataclass(frozen=True, slots=True)
class Bounds:
    """Largest quality loss (a fraction), latency and size a plan may have (None: any)."""

    max_drop: float
    max_latency_ms: float | None = None
    max_size_mb: float | None = None

    def quality_ok(self, quality: float) -> bool:
        return 1.0 - quality <= self.max_drop

    def fits(self, c: Candidate) -> bool:
        """Whether a measured candidate meets every bound."""
        if not self.quality_ok(c.quality):
            return False
        if self.max_latency_ms is not None and (c.latency_ms is None
                                                or c.latency_ms > self.max_latency_ms):
            return False
        return self.max_size_mb is None or (c.size_bytes is not None
                                            and c.size_bytes <= self.max_size_mb * 2**20)

    def to_json(self) -> dict:
        return {"max_drop": self.max_drop, "max_latency_ms": self.max_latency_ms,
                "max_size_mb": self.max_size_mb}
