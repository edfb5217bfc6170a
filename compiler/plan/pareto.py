"""The Pareto frontier of measured candidates over quality, latency and size."""

from __future__ import annotations

from layerwise.compiler.plan.candidate import Candidate


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """Measured candidates no other beats on quality, latency and size at once, fastest
    first."""
    measured = [c for c in cands if c.latency_ms is not None]

    def dominated(a: Candidate) -> bool:
        return any(b is not a and b.quality >= a.quality and b.latency_ms <= a.latency_ms
                   and b.size_bytes <= a.size_bytes and (b.quality > a.quality or
                                                         b.latency_ms < a.latency_ms or
                                                         b.size_bytes < a.size_bytes)
                   for b in measured)

    return sorted((c for c in measured if not dominated(c)), key=lambda c: c.latency_ms)
