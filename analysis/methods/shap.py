"""Shapley values of blocks (permutation sampling, antithetic pairs): the value of a set of
kept blocks is minus the task damage of the model with every other block dropped; a block's
Shapley value is its average marginal reduction of damage over random orders.

Truncated (as in truncated Monte Carlo Shapley): each order drops blocks from the full model
only until half of them are gone, so the coalitions stay in the regime of compressed models
(with most blocks dropped the outputs are off-distribution and marginals turn to noise). With
an order and its reverse every block is sampled once per pair. A block scores |phi|: a
negative share still means the block matters (its presence moves the output the other way);
signed values are in the detail."""

from __future__ import annotations

import torch

from layerwise.analysis.methods import MethodInfo, Result


class ShapAnalysis:
    """`permutations` orders (half of them the reverses of the others), each n_blocks passes
    over at most `samples` samples."""

    info = MethodInfo("shap_analysis", "intervention", per_block_forward=2.0,
                      summary="Shapley values of blocks over ablation coalitions")

    def __init__(self, permutations: int = 4, samples: int | None = 64) -> None:
        self.permutations = max(2, permutations + permutations % 2)
        self.samples = samples

    def run(self, ctx) -> Result:
        ctx.require_data(self.info.name)
        probe = ctx.probe(gates=True)
        idx = [s.index for s in ctx.sites if s.droppable]
        gen = torch.Generator().manual_seed(ctx.seed + 17)
        orders = []
        for _ in range(self.permutations // 2):
            perm = [idx[i] for i in torch.randperm(len(idx), generator=gen).tolist()]
            orders += [perm, perm[::-1]]
        phi = {i: 0.0 for i in idx}
        seen = {i: 0 for i in idx}
        depth = (len(idx) + 1) // 2
        prev = 0.0
        for order in orders:
            alpha = torch.ones(len(ctx.sites))
            prev = 0.0  # damage of the full model
            for i in order[:depth]:  # drop one by one; the marginal damage is block i's share
                alpha[i] = 0.0
                d = ctx.damage(probe, alpha.clone(), limit=self.samples)
                phi[i] += d - prev
                seen[i] += 1
                prev = d
        phi = {i: v / max(seen[i], 1) for i, v in phi.items()}
        scores = ctx.nan_scores()
        for s in ctx.sites:
            if s.droppable:
                scores[s.path] = abs(phi[s.index])
        signed = {s.path: phi[s.index] for s in ctx.sites if s.droppable}
        return Result(scores, {"signed": signed, "permutations": len(orders),
                               "value": "-damage of kept set",
                               "truncated_at": depth})
