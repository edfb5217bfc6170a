"""Meta-learning: predict block importance from data-free block features (depth, size, kind
shares, spectral statistics) with a ridge regression trained on recorded analyses of other
models (the analyze runs stored in the SQLite results history, passed in as plain records),
so a new architecture gets scores with no data at all."""

from __future__ import annotations

import numpy as np

from layerwise.analysis.records import FEATURES, block_features, valid_records
from layerwise.analysis.methods import MethodError, MethodInfo, Result


def fit_ridge(x: np.ndarray, y: np.ndarray, lam: float = 1.0) -> tuple[np.ndarray, ...]:
    """(mean, std, weights, bias) of ridge regression on standardised features."""
    mu, sd = x.mean(0), x.std(0)
    sd[sd < 1e-9] = 1.0
    z = (x - mu) / sd
    w = np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return mu, sd, w, float(y.mean())


class MetaLearning:
    """Ridge regression from block features to importance percentile; needs a history."""

    info = MethodInfo("meta_learning", "static", data_free=True,
                      summary="importance predicted from layer features, trained on history")

    def __init__(self, history: list[dict] | None = None, exclude_model: bool = True) -> None:
        self.history = history
        self.exclude_model = exclude_model

    def run(self, ctx) -> Result:
        records = self.history if self.history is not None else ctx.options.get("history")
        spec = str(ctx.ir.meta.get("spec", "model"))
        recs = [r for r in valid_records(records)
                if not (self.exclude_model and r["model"] == spec)]
        rows = [(b["features"], b["importance"]) for r in recs for b in r["blocks"]]
        if len(rows) < 4:
            raise MethodError(f"meta_learning has {len(rows)} recorded blocks from other models "
                              "in the results history; analyse a few other models with data "
                              "first (same --db)")
        x = np.array([[f.get(k, 0.0) for k in FEATURES] for f, _ in rows], dtype=np.float64)
        y = np.array([v for _, v in rows], dtype=np.float64)
        mu, sd, w, b = fit_ridge(np.nan_to_num(x), y)
        feats = block_features(ctx)
        scores = ctx.nan_scores()
        for path, f in feats.items():
            z = (np.nan_to_num(np.array([f.get(k, 0.0) for k in FEATURES])) - mu) / sd
            scores[path] = float(z @ w + b)
        return Result(scores, {"records": len(recs), "training_blocks": len(rows),
                               "weights": dict(zip(FEATURES, map(float, w)))})
