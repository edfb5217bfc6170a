"""Layer ablation: the measured damage (task damage vs the uncompressed model's outputs) when
each block alone is replaced by the identity. The direct measurement the others estimate."""

from __future__ import annotations

import torch

from layerwise.analysis.methods import MethodInfo, Result


class LayerAblation:
    """One gated forward pass over the data per droppable block."""

    info = MethodInfo("layer_ablation", "intervention", per_block_forward=1.0,
                      summary="measured damage when the block alone is dropped")

    def __init__(self, samples: int | None = None) -> None:
        self.samples = samples

    def run(self, ctx) -> Result:
        ctx.require_data(self.info.name)
        probe = ctx.probe(gates=True)
        scores = ctx.nan_scores()
        for s in ctx.sites:
            if s.droppable:
                alpha = torch.ones(len(ctx.sites))
                alpha[s.index] = 0.0
                scores[s.path] = ctx.damage(probe, alpha, limit=self.samples)
        return Result(scores, {"damage": ctx.task.name})
