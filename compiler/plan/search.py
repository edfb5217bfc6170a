"""Depth, then width, then precision, against the bounds.

Depth: blocks are dropped in the given order (least important first) and the largest count
whose quality loss stays within the bound is found by bisection (never every block). Width:
the largest prune ratio whose loss, with that depth, stays within the bound. Precision: the
structural plan is measured in fp32, then INT8, keeping the most important blocks in fp32
one at a time while INT8 misses the bound; when no INT8 plan fits at that depth, INT8 is
tried with fewer blocks dropped (depth and precision together: one block fewer in INT8 is
often faster than the deeper cut in fp32); then any other precisions asked for. The fastest
measured candidate within every bound is chosen. A time budget stops the search once
spent (the depth and width found so far stand; the fp32 plan is measured unless a seed
candidate, measured before the search, fits the bounds). Assumes
`order` lists droppable blocks least important first; `quality_of(drop, prune)` is the cheap
fidelity of a structural plan (it may raise LayerwiseError for a plan that cannot be built,
which the search notes and skips); `measure(candidate)` builds the artifact and fills in
quality, latency and size.

Before each decision the search names, through `ahead(plans, candidates)`, the structural
plans and candidates it will or may ask for next, most likely first (the bisection's next
midpoint either way, every prune ratio, every precision still to try). An executor may start
those at once on other workers; the search still asks for them one at a time and decides
on what it receives in its own order, so its choice depends only on the measurements.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.plan.candidate import Bounds, Candidate
from layerwise.compiler.plan.pareto import pareto

QualityOf = Callable[[list[str], float | None], float]
Measure = Callable[[Candidate], Candidate]
# ahead(plans, candidates): the structural plans (drop, prune) and the candidates the search
# will or may ask for next, most likely first; what an earlier call named and this one does
# not is no longer wanted
Ahead = Callable[[list[tuple[list[str], float | None]], list[Candidate]], None]
INT8_TRIES = 3  # INT8 with 0, 1, 2 blocks (or 0, 1, 3 layers) kept in fp32


class NoPlanError(LayerwiseError):
    """No candidate met the bounds; the message names the best one and the miss."""


def _noop(_: str) -> None:
    pass


def _nothing_ahead(plans: list, candidates: list) -> None:
    pass


def depth(order: list[str], quality_of: QualityOf, bounds: Bounds, tried: list[Candidate],
          progress: Callable[[str], None] = _noop, *,
          spent: Callable[[], bool] = lambda: False, ahead: Ahead = _nothing_ahead) -> int:
    """Largest k such that dropping order[:k] loses at most the bound (bisection); once
    `spent()`, the largest k found so far."""
    lo, hi = 0, len(order) - 1  # never drop every block
    while lo < hi and not spent():
        mid = (lo + hi + 1) // 2
        # then the next midpoint if mid fits the bound, and the one if it does not
        nxt = [m for m, left in (((mid + hi + 1) // 2, mid < hi), ((lo + mid) // 2, lo < mid - 1))
               if left]
        ahead([(order[:m], None) for m in (mid, *nxt)], [])
        progress(f"trying to drop {mid} block(s)")
        q = quality_of(order[:mid], None)
        tried.append(Candidate(order[:mid], quality=q))
        if bounds.quality_ok(q):
            lo = mid
        else:
            hi = mid - 1
    return lo


def width(drop: list[str], ratios: tuple[float, ...], quality_of: QualityOf, bounds: Bounds, *,
          tried: list[Candidate], notes: list[str],
          progress: Callable[[str], None] = _noop,
          spent: Callable[[], bool] = lambda: False,
          ahead: Ahead = _nothing_ahead) -> float | None:
    """The largest of `ratios` whose loss, with `drop`, stays within the bound; None when
    none does or the model has nothing to prune."""
    ahead([(list(drop), r) for r in sorted(ratios, reverse=True)], [])
    for ratio in sorted(ratios, reverse=True):
        if spent():
            return None
        progress(f"trying to prune {ratio:.0%} of the channels")
        try:
            q = quality_of(drop, ratio)
        except LayerwiseError as e:
            notes.append(f"prune {ratio}: {e}")
            return None
        tried.append(Candidate(list(drop), prune=ratio, quality=q))
        if bounds.quality_ok(q):
            return ratio
    return None


def run_search(order: list[str], quality_of: QualityOf, measure: Measure, bounds: Bounds, *,
               prune_ratios: tuple[float, ...] = (), int8: bool = False,
               others: tuple[str, ...] = (), progress: Callable[[str], None] = _noop,
               budget_s: float | None = None, started: float | None = None,
               keep_order: list[str] | Callable[[], list[str] | None] | None = None,
               seed: tuple[Candidate, ...] = (),
               ahead: Ahead = _nothing_ahead) -> tuple[Candidate, dict]:
    """Search depth, width, then precision (static INT8 keeping the most important blocks in
    fp32 until the bound holds, then each of `others`). `seed`: plans measured (or being
    measured) before the search, first in the record; their figures are read through
    `measure` when needed, so `measure` must return what it measured before when asked for
    a plan again. `budget_s` counts from `started` (a perf_counter time; default now);
    `keep_order` may be a function, called once INT8 is tried; `ahead`: see the module
    docstring (the seed is named in every call). Returns the chosen candidate and the search
    record; NoPlanError when nothing meets the bounds."""
    t0 = time.perf_counter() if started is None else started
    tried: list[Candidate] = list(seed)
    notes: list[str] = []

    def hint(plans: list, candidates: list[Candidate]) -> None:
        ahead(plans, [*seed, *candidates])

    def figures(c: Candidate) -> Candidate:
        """c as measured (a seed's figures are read when first needed)."""
        return measure(c) if any(c is old for old in seed) else c

    def spent() -> bool:
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            note = f"search budget of {budget_s:.0f} s spent: searching stopped"
            if note not in notes:
                notes.append(note)
            return True
        return False

    def measured(c: Candidate) -> Candidate:
        for old in seed:
            if _same(old, c):
                return measure(old)
        c = measure(c)
        tried.append(c)
        return c

    k = depth(order, quality_of, bounds, tried, progress, spent=spent, ahead=hint)
    ratio = width(order[:k], prune_ratios, quality_of, bounds, tried=tried, notes=notes,
                  progress=progress, spent=spent, ahead=hint) if prune_ratios else None
    # what is measured from here on: fp32 (unless out of time with a seed that fits), INT8,
    # the other precisions; then, should INT8 miss, INT8 keeping layers in fp32 and INT8
    # with fewer blocks dropped
    fp32 = [] if spent() and any(bounds.fits(measure(c)) for c in seed) else [
        Candidate(order[:k], prune=ratio)]
    rest = [Candidate(order[:k], p, prune=ratio) for p in others]
    int8s = [Candidate(order[:k], "int8", prune=ratio)] if int8 else []
    hint([], [*fp32, *int8s, *rest])
    backs: list[Candidate] = []
    if int8 and not spent():
        int8s = [Candidate(order[:k], "int8", keep, prune=ratio)
                 for keep in _int8_keeps(order, k, keep_order)]
        backs = [Candidate(order[:j], "int8")
                 for j in range(k - 1, max(-1, k - 1 - INT8_TRIES), -1)]
        hint([], [*fp32, *int8s[:1], *rest, *int8s[1:], *backs])
    chosen = list(seed)
    if fp32:  # else: out of time, and a seed fits
        progress(f"measuring fp32 with {k} block(s) dropped" +
                 (f", {ratio:.0%} pruned" if ratio else ""))
        chosen.append(measured(fp32[0]))
    if int8 and not spent():
        for plan in int8s:
            progress(f"measuring int8 (fp32 kept: {len(plan.keep_fp32)})")
            c = measured(plan)
            chosen.append(c)
            if bounds.fits(c) or spent():
                break
        for c in backs:
            if any(x.precision == "int8" and bounds.fits(x) for x in map(figures, chosen)) or (
                    spent()):
                break
            progress(f"measuring int8 with {len(c.drop)} block(s) dropped")
            chosen.append(measured(c))
    for c in rest:
        if spent():
            break
        progress(f"measuring {c.precision}")
        chosen.append(measured(c))
    tried, chosen = [figures(c) for c in tried], [figures(c) for c in chosen]
    record = {
        "bound": bounds.to_json(),
        "drop_order": order,
        "prune_ratios_tried": list(prune_ratios),
        "notes": notes,
        "candidates": [c.to_json() for c in tried],
        "pareto": [c.to_json() for c in pareto(tried)],
        "seconds": time.perf_counter() - t0,  # from `started`
        "budget_s": budget_s,
    }
    best = _choose(chosen, bounds)
    record["chosen"] = best.to_json()
    return best, record


def _choose(chosen: list[Candidate], bounds: Bounds) -> Candidate:
    """The fastest of `chosen` within every bound; NoPlanError naming the best and its miss
    when none is."""
    fitting = [c for c in chosen if bounds.fits(c)]
    if not fitting:
        best = max(chosen, key=lambda c: (c.quality, -(c.latency_ms or 0)))
        miss = (1.0 - best.quality) - bounds.max_drop
        raise NoPlanError(
            f"no plan meets the bounds: the best ({len(best.drop)} block(s) dropped, "
            f"{best.precision}) loses {100 * (1 - best.quality):.2f}% quality "
            f"({100 * max(miss, 0):.2f} points over --max-drop), latency "
            f"{best.latency_ms:.2f} ms, size {best.size_bytes / 2**20:.1f} MiB; loosen a bound")
    return fastest(fitting)


def _same(a: Candidate, b: Candidate) -> bool:
    """Whether a and b are the same plan."""
    return (a.drop, a.precision, a.keep_fp32, a.prune) == (b.drop, b.precision, b.keep_fp32,
                                                          b.prune)


def _int8_keeps(order: list[str], k: int,
                keep_order: list[str] | Callable[[], list[str] | None] | None
                ) -> list[list[str]]:
    """The fp32 layers of each INT8 try at depth k: none, then the most important blocks one
    at a time (or, given a per-layer `keep_order`, the 1, 3, 7... most sensitive layers
    outside the dropped blocks), at most INT8_TRIES tries."""
    if callable(keep_order):
        keep_order = keep_order()
    gone = tuple(f"{b}." for b in order[:k])
    if keep_order is None:
        important = [b for b in reversed(order) if b not in order[:k]]
    else:
        important = [p for p in keep_order if p not in order[:k] and not p.startswith(gone)]
    keeps: list[list[str]] = [[]]
    for attempt in range(INT8_TRIES - 1):
        if not important:
            break
        more = 1 if keep_order is None else 2 ** (attempt + 1) - 1 - len(keeps[-1])
        keeps.append(keeps[-1] + important[:more])
        important = important[more:]
    return keeps


def fastest(fitting: list[Candidate]) -> Candidate:
    """The fastest candidate; those whose p50 lies within the timing spread (p90 - p50) of the
    fastest are a tie, and of a tie the smallest artifact wins (then the faster)."""
    first = min(fitting, key=lambda c: c.latency_ms)
    tied = [c for c in fitting
            if c.latency_ms - first.latency_ms <= max(first.latency_spread_ms,
                                                      c.latency_spread_ms)]
    return min(tied, key=lambda c: (c.size_bytes or 0, c.latency_ms))
