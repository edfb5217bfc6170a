"""Rank aggregation across methods: each method's scores become within-model percentiles;
the ensemble is their weighted mean, each method weighted by its prior reliability times its
agreement (Spearman, leave-one-out) with the consensus of the others, so a method that
disagrees with everything else counts little. Methods with constant scores carry no ranking
and get weight 0."""

from __future__ import annotations

import math

import numpy as np


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (0-based) with ties sharing their mean rank."""
    order = values.argsort(kind="stable")
    r = np.empty(len(values))
    r[order] = np.arange(len(values), dtype=np.float64)
    for v in np.unique(values):
        tie = values == v
        r[tie] = r[tie].mean()
    return r


def spearman(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    """Spearman rank correlation over the entries finite in both (NaN if < 3 or constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return math.nan
    ra, rb = ranks(a[keep]), ranks(b[keep])
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def percentiles(scores: dict[str, float], paths: list[str]) -> np.ndarray:
    """Scores as percentiles in [0, 1] over `paths` (NaN where the method does not apply)."""
    v = np.array([scores.get(p, math.nan) for p in paths], dtype=np.float64)
    keep = np.isfinite(v)
    out = np.full(len(paths), math.nan)
    if keep.sum() >= 2:
        out[keep] = ranks(v[keep]) / (keep.sum() - 1)
    elif keep.sum() == 1:
        out[keep] = 0.5
    return out


def aggregate(results: dict[str, dict[str, float]], paths: list[str],
              priors: dict[str, float] | None = None, anchors: tuple[str, ...] = (),
              rounds: int = 4) -> tuple[dict[str, float], dict[str, float]]:
    """(ensemble score per path, weight per method).

    One-factor model: each method's percentiles are the true ranking plus noise; a method
    whose reliability (correlation with the truth) is r gets the precision weight
    prior * r^2 / (1 - r^2). r is estimated as the method's Spearman correlation with the
    consensus of the other methods; `anchors` (methods that measure the damage directly) get
    r from their prior instead. r is capped at R_MAX."""
    priors = priors or {}
    pct = {m: percentiles(s, paths) for m, s in results.items()}
    informative = {m: p for m, p in pct.items()
                   if np.isfinite(p).sum() >= 2 and np.nanstd(p) > 0}
    weights = {m: _precision(float(priors.get(m, 0.5))) for m in informative}
    for _ in range(rounds):
        new = {}
        for m in informative:
            prior = float(priors.get(m, 0.5))
            others = {k: v for k, v in informative.items() if k != m}
            if m in anchors or not others:
                new[m] = prior * _precision(prior)
                continue
            rho = spearman(informative[m], _weighted_mean(others, weights))
            if math.isnan(rho):  # the others cancel out: compare with the whole consensus
                rho = spearman(informative[m], _weighted_mean(informative, weights))
            new[m] = prior * _precision(0.0 if math.isnan(rho) else rho)
        if sum(new.values()) > 0:
            weights = new
    ens = _weighted_mean(informative, weights) if informative else np.full(len(paths), math.nan)
    out_w = {m: weights.get(m, 0.0) for m in results}
    return {p: float(v) for p, v in zip(paths, ens)}, out_w


R_MAX = 0.97


def _precision(r: float) -> float:
    r = min(max(r, 0.0), R_MAX)
    return r * r / (1.0 - r * r)


def _weighted_mean(pct: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    stack = np.array([pct[m] for m in pct])
    w = np.array([weights.get(m, 0.0) for m in pct])[:, None] * np.isfinite(stack)
    total = w.sum(0)
    val = np.nansum(np.nan_to_num(stack) * w, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, val / np.where(total > 0, total, 1), math.nan)
