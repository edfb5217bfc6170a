"""Analysis records for meta_learning: each block's data-free features and its measured
importance. `make_record` builds one from an analysis; the API stores it with the analyze run
in the SQLite results history (runtime/history.py) and hands the stored records back to
`analyze(history=...)` as plain values, so this room never opens the database.

Features are relative to the model they come from (position in depth, size and spectral norm
against the model's own median), so records transfer across model scales."""

from __future__ import annotations

import math

import numpy as np

from layerwise.base.errors import LayerwiseError

FORMAT = "layerwise-analysis-record/1"
FEATURES = ["depth", "log_params_rel", "log_flops_rel", "log_sigma_rel", "zero_matrices",
            "effective_rank_fraction", "alpha", "attention_share", "mlp_share", "conv_share"]


def block_features(ctx) -> dict[str, dict[str, float]]:
    """Data-free features of every block: depth, size, kind shares and spectral statistics."""
    from layerwise.analysis.methods.spectral import block_spectral

    sites = ctx.sites
    n = max(len(sites) - 1, 1)
    layers = {layer.path: layer for layer in ctx.ir.layers}
    params = [max(layers[s.path].params, 1) for s in sites]
    flops = [max(layers[s.path].flops, 1) for s in sites]
    spec = {s.path: block_spectral(ctx, s.path) for s in sites}
    sig = [spec[s.path]["score"] for s in sites]
    pos_sig = [v for v in sig if v and not math.isnan(v) and v > 0]
    med_sig = float(np.median(pos_sig)) if pos_sig else 1.0
    out = {}
    for i, s in enumerate(sites):
        children = [x for x in ctx.ir.layers if x.path.startswith(s.path + ".")]
        total = max(sum(x.params for x in children if x.depth == layers[s.path].depth + 1), 1)

        def share(kind: str, s=s, children=children, total=total) -> float:
            return sum(x.params for x in children if x.kind == kind) / total

        sp = spec[s.path]
        sv = sig[i]
        out[s.path] = {
            "depth": i / n,
            "log_params_rel": math.log(params[i] / float(np.median(params))),
            "log_flops_rel": math.log(flops[i] / float(np.median(flops))),
            "log_sigma_rel": float(np.clip(math.log(max(sv, 1e-12) / med_sig), -10, 10))
            if not math.isnan(sv) else 0.0,
            "zero_matrices": float(sp.get("zero_matrices", 0) > 0),
            "effective_rank_fraction": float(np.nan_to_num(
                sp.get("mean_effective_rank_fraction", 0.0))),
            "alpha": float(np.clip(np.nan_to_num(sp.get("mean_alpha", 0.0)), 0, 20)),
            "attention_share": share("attention"),
            "mlp_share": share("mlp"),
            "conv_share": share("conv"),
        }
    return out


def rank_percentiles(scores: dict[str, float]) -> dict[str, float]:
    """Each block's importance as a percentile in [0, 1] within its model (NaN dropped)."""
    items = [(k, v) for k, v in scores.items() if not math.isnan(v)]
    if len(items) < 2:
        return {k: 0.5 for k, _ in items}
    vals = np.array([v for _, v in items])
    ranks = np.array([(vals < v).sum() + 0.5 * ((vals == v).sum() - 1) for v in vals])
    return {k: float(r / (len(items) - 1)) for (k, _), r in zip(items, ranks)}


def make_record(ctx, scores: dict[str, float], target: str) -> dict:
    """One record: the blocks' features and their importance percentiles under `target`."""
    feats = block_features(ctx)
    pct = rank_percentiles(scores)
    return {"format": FORMAT, "model": str(ctx.ir.meta.get("spec", "model")), "target": target,
            "blocks": [{"path": p, "features": feats[p], "importance": pct[p]}
                       for p in feats if p in pct]}


def valid_records(records) -> list[dict]:
    """The records (plain dicts) in the current format; anything else is refused."""
    out = []
    for rec in records or []:
        if not isinstance(rec, dict) or rec.get("format") != FORMAT:
            raise LayerwiseError(f"history record {str(rec)[:60]!r} is not a {FORMAT} record; "
                                 "re-run `layerwise analyze` on that model")
        out.append(rec)
    return out
