"""Spectral analysis (data-free): singular values of every weight matrix in a block (conv
kernels as out x in*k*k). Per matrix: spectral norm, stable rank, effective rank (exp of the
entropy of normalised singular values, Roy & Vetterli 2007) and the heavy-tail exponent alpha
of the eigenvalue spectrum (Hill estimator on the top half; Martin & Mahoney 2021).

A block scores the geometric mean of its matrices' spectral norms, a bound-like measure of how
much its branch can move the hidden state: a block with a zeroed matrix scores 0. Blocks whose
spectra are identical are reported as duplicates."""

from __future__ import annotations

import math

import numpy as np
import torch

from layerwise.analysis.methods import MethodInfo, Result


def matrix_stats(w: torch.Tensor) -> dict:
    """Spectral statistics of one weight tensor (>= 2 dims)."""
    m = w.detach().float().reshape(w.shape[0], -1)
    s = torch.linalg.svdvals(m).double().numpy()
    top = float(s[0]) if s.size else 0.0
    out = {"shape": list(w.shape), "sigma_max": top, "stable_rank": 0.0,
           "effective_rank": 0.0, "alpha": math.nan}
    if top <= 0:
        return out
    out["stable_rank"] = float((s ** 2).sum() / top ** 2)
    p = s / s.sum()
    p = p[p > 0]
    out["effective_rank"] = float(np.exp(-(p * np.log(p)).sum()))
    lam = np.sort(s ** 2)[::-1]
    k = max(len(lam) // 2, 2)
    tail = lam[:k]
    if tail[-1] > 0 and k > 2:
        out["alpha"] = float(1.0 + k / np.log(tail / tail[-1]).sum()) \
            if np.log(tail / tail[-1]).sum() > 0 else math.nan
    out["_spectrum"] = s
    return out


def block_weights(ctx, path: str) -> dict[str, torch.Tensor]:
    """The block's parameters with >= 2 dimensions, from the program's state dict."""
    prefix = path + "."
    state = ctx.ir.program.state_dict
    return {n: t for n, t in state.items() if n.startswith(prefix) and t.dim() >= 2}


def block_spectral(ctx, path: str) -> dict:
    """Per-matrix stats and the block summary (log geometric-mean spectral norm, ...)."""
    mats = {n: matrix_stats(w) for n, w in block_weights(ctx, path).items()}
    if not mats:
        return {"matrices": {}, "score": math.nan}
    sig = [m["sigma_max"] for m in mats.values()]
    score = 0.0 if min(sig) <= 0 else float(np.exp(np.mean(np.log(sig))))
    alphas = [m["alpha"] for m in mats.values() if not math.isnan(m["alpha"])]
    eff = [m["effective_rank"] / min(m["shape"][0], int(np.prod(m["shape"][1:])))
           for m in mats.values()]
    return {"matrices": mats, "score": score,
            "mean_alpha": float(np.mean(alphas)) if alphas else math.nan,
            "mean_effective_rank_fraction": float(np.mean(eff)),
            "zero_matrices": int(sum(s <= 0 for s in sig))}


class SpectralAnalysis:
    """Weights only: no data, no passes."""

    info = MethodInfo("spectral_analysis", "static", data_free=True,
                      summary="singular values, effective rank, heavy-tail alpha of weights")

    def run(self, ctx) -> Result:
        scores = ctx.nan_scores()
        detail: dict = {"blocks": {}, "duplicates": []}
        spectra = {}
        for s in ctx.sites:
            b = block_spectral(ctx, s.path)
            scores[s.path] = b["score"]
            mats = b.pop("matrices")
            spectra[s.path] = [m.pop("_spectrum", np.zeros(0)) for m in mats.values()]
            detail["blocks"][s.path] = {**b, "matrices": mats}
        paths = list(spectra)
        for i, a in enumerate(paths):
            for b in paths[i + 1:]:
                sa, sb = spectra[a], spectra[b]
                if sa and len(sa) == len(sb) and all(
                        x.shape == y.shape and np.allclose(x, y, rtol=1e-6, atol=1e-9)
                        for x, y in zip(sa, sb)):
                    detail["duplicates"].append([a, b])
        return Result(scores, detail)
