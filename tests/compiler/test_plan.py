"""compiler/plan with a fake measure(): no model, no runtime, no torch. Each block costs a
known quality when dropped, each precision a known loss and speed, so the right plan is
known in advance."""

from __future__ import annotations

import pytest

from layerwise.compiler.plan import Bounds, Candidate, NoPlanError, pareto, run_search

# quality lost by dropping each block (the order is least important first)
COST = {"b0": 0.001, "b1": 0.002, "b2": 0.004, "b3": 0.02, "b4": 0.05}
ORDER = list(COST)
INT8_LOSS = {"b4": 0.006, "b3": 0.004}  # int8 of these blocks costs this much quality


def quality_of(drop: list[str], prune: float | None) -> float:
    return 1.0 - sum(COST[b] for b in drop) - (prune or 0.0) * 0.05


def measure(c: Candidate) -> Candidate:
    loss = 1.0 - quality_of(c.drop, c.prune)
    if c.precision == "int8":
        loss += sum(v for b, v in INT8_LOSS.items() if b not in c.keep_fp32 + c.drop)
    c.quality = 1.0 - loss
    speed = {"fp32": 1.0, "int8": 0.4, "int8-dynamic": 0.6}[c.precision]
    c.latency_ms = 10.0 * speed * (len(ORDER) - len(c.drop)) / len(ORDER)
    c.size_bytes = int(1e6 * (len(ORDER) - len(c.drop)) * (0.25 if "int8" in c.precision else 1))
    c.latency_on = "fake"
    return c


def test_bisection_drops_the_most_blocks_within_the_bound():
    best, record = run_search(ORDER, quality_of, measure, Bounds(0.008))
    assert best.drop == ["b0", "b1", "b2"] and best.precision == "fp32"
    assert record["chosen"]["drop"] == ["b0", "b1", "b2"]
    # bisection: at most ceil(log2(5)) structural trials before the measured one
    assert sum(c["latency_ms"] is None for c in record["candidates"]) <= 3


def test_int8_keeps_the_most_important_blocks_in_fp32_until_the_bound_holds():
    best, record = run_search(ORDER, quality_of, measure, Bounds(0.012), int8=True)
    assert best.drop == ["b0", "b1", "b2"]
    # int8 everywhere loses 0.007 + 0.010 > 0.012; keeping b4 (most important) in fp32 fits
    assert best.precision == "int8" and best.keep_fp32 == ["b4"]
    tried = [(c["precision"], c["keep_fp32"]) for c in record["candidates"]
             if c["latency_ms"] is not None]
    assert tried == [("fp32", []), ("int8", []), ("int8", ["b4"])]


def test_width_takes_the_largest_prune_ratio_within_the_bound():
    best, _ = run_search(ORDER, quality_of, measure, Bounds(0.02),
                         prune_ratios=(0.5, 0.25, 0.125))
    assert best.drop == ["b0", "b1", "b2"] and best.prune == 0.25


def test_latency_bound_and_no_plan():
    with pytest.raises(NoPlanError, match="no plan meets the bounds"):
        run_search(ORDER, quality_of, measure, Bounds(0.001, max_latency_ms=1.0))
    best, _ = run_search(ORDER, quality_of, measure, Bounds(0.02, max_latency_ms=5.0),
                         int8=True, others=("int8-dynamic",))
    assert best.latency_ms <= 5.0 and best.precision == "int8"


def test_pareto_keeps_only_undominated():
    a = Candidate([], quality=0.99, latency_ms=5.0, size_bytes=10)
    b = Candidate([], quality=0.98, latency_ms=6.0, size_bytes=10)  # worse on all
    c = Candidate([], quality=0.95, latency_ms=2.0, size_bytes=20)  # faster
    assert pareto([a, b, c]) == [c, a]


def test_int8_backs_off_depth_when_it_misses_the_bound_at_full_depth():
    """INT8 costs 0.003 everywhere: at the depth fp32 allows (3 blocks, 0.007) no INT8 plan
    fits 0.008, so INT8 is measured with one block fewer, which fits and is faster than the
    deeper fp32 cut."""

    def int8_costs(c: Candidate) -> Candidate:  # int8 costs the same whatever is kept
        m = measure(Candidate(c.drop, "fp32", prune=c.prune))
        c.quality, c.size_bytes, c.latency_on = m.quality, m.size_bytes, m.latency_on
        c.latency_ms = m.latency_ms * (0.4 if c.precision == "int8" else 1.0)
        if c.precision == "int8":
            c.quality -= 0.003
        return c

    best, record = run_search(ORDER, quality_of, int8_costs, Bounds(0.008), int8=True)
    assert best.precision == "int8" and best.drop == ["b0", "b1"] and best.keep_fp32 == []
    measured = [(len(c["drop"]), c["precision"]) for c in record["candidates"]
                if c["latency_ms"] is not None]
    assert measured[0] == (3, "fp32") and measured[-1] == (2, "int8")


def test_a_spent_budget_stops_measuring_after_the_fp32_plan():
    best, record = run_search(ORDER, quality_of, measure, Bounds(0.012), int8=True,
                              others=("int8-dynamic",), budget_s=0.0)
    assert best.precision == "fp32"
    assert [c["precision"] for c in record["candidates"] if c["latency_ms"] is not None] == [
        "fp32"]
    assert record["budget_s"] == 0.0 and "budget" in record["notes"][-1]


def test_int8_keeps_the_most_sensitive_layers_given():
    """With a per-layer order (INT8 sensitivity), INT8 keeps 1 then 3 layers in fp32, never
    one inside a dropped block."""
    layers = ["b4.fc", "b0.fc", "b3.fc", "b4.proj", "b2.fc"]

    def layer_costs(c: Candidate) -> Candidate:  # each sensitive layer kept wins 0.004
        keep = list(c.keep_fp32)
        m = measure(Candidate(c.drop, c.precision, [], prune=c.prune))
        m.quality += 0.004 * sum(p in keep for p in ("b4.fc", "b3.fc", "b4.proj"))
        m.keep_fp32 = keep
        return m

    best, record = run_search(ORDER, quality_of, layer_costs, Bounds(0.012), int8=True,
                              keep_order=layers)
    tried = [c["keep_fp32"] for c in record["candidates"] if c["precision"] == "int8"]
    assert tried == [[], ["b4.fc"], ["b4.fc", "b3.fc", "b4.proj"]]  # b0.fc: b0 was dropped
    assert best.precision == "int8" and best.keep_fp32 == ["b4.fc", "b3.fc", "b4.proj"]


def test_everything_measured_was_named_ahead_and_ahead_changes_nothing():
    """What an executor may start early (`ahead`) covers each structural plan and candidate
    the search asks for, named by the latest call before it asks (an executor drops what
    that call leaves out); the choice and the record are the same with it."""
    latest: set = set()
    asked: list = []

    def ahead(plans, cands):
        latest.clear()
        latest.update((tuple(d), p, "torch") for d, p in plans)
        latest.update((tuple(c.drop), c.prune, c.precision, tuple(c.keep_fp32)) for c in cands)

    def q(drop, prune):
        asked.append((tuple(drop), prune, "torch"))
        assert asked[-1] in latest
        return quality_of(drop, prune)

    def m(c):
        asked.append((tuple(c.drop), c.prune, c.precision, tuple(c.keep_fp32)))
        assert asked[-1] in latest
        return measure(c)

    kw = {"prune_ratios": (0.5, 0.25), "int8": True, "others": ("int8-dynamic",)}
    for bound in (0.004, 0.008, 0.012, 0.03):
        asked.clear()
        best, record = run_search(ORDER, q, m, Bounds(bound), ahead=ahead, **kw)
        plain, plain_record = run_search(ORDER, quality_of, measure, Bounds(bound), **kw)
        assert asked and best.to_json() == plain.to_json()
        assert record["candidates"] == plain_record["candidates"]
