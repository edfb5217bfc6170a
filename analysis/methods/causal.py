"""Causal analysis by activation patching (resample ablation): each block's update
(output - input) is replaced by the update the block computed for another sample of the batch;
the score is the damage this causes. A block whose update carries no input-specific
information (the identity, or a constant shift) scores 0."""

from __future__ import annotations

import torch

from layerwise.analysis.methods import MethodError, MethodInfo, Result


class CausalAnalysis:
    """One patched forward pass over the data per droppable block (needs batches of >= 2)."""

    info = MethodInfo("causal_analysis", "intervention", per_block_forward=1.0,
                      summary="damage when the block's update is patched from another input")

    def __init__(self, samples: int | None = None) -> None:
        self.samples = samples

    def run(self, ctx) -> Result:
        ctx.require_data(self.info.name)
        if max(ctx.batch_sizes) < 2:
            raise MethodError("causal_analysis patches activations across samples of a batch: "
                              "use batches of at least 2 samples")
        probe = ctx.probe(gates=True, patch=True)
        scores = ctx.nan_scores()
        n = len(ctx.sites)
        for s in ctx.sites:
            if s.droppable:
                alpha, beta = torch.ones(n), torch.zeros(n)
                alpha[s.index], beta[s.index] = 0.0, 1.0
                scores[s.path] = ctx.damage(probe, alpha, beta, limit=self.samples)
        return Result(scores, {"patch": "update from the next sample in the batch (roll by 1)"})
