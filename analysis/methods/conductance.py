"""Layer conductance (Dhamdhere et al. 2019) along the residual-branch path: every block's
update is scaled by alpha from `start` to 1 (the model); a block's conductance is the integral
of dF/d alpha_block, where F = -damage vs the uncompressed outputs. By completeness the scores
sum to the damage of the baseline (start 0: every block dropped). A block scores the magnitude
|conductance| (a negative share means the block's presence moves the output away from the
reference along the path: it matters, in the other direction); signed values are in the
detail."""

from __future__ import annotations

import torch

from layerwise.analysis.methods import MethodInfo, Result


class LayerConductance:
    """`steps` forward and backward passes (midpoint rule)."""

    info = MethodInfo("layer_conductance", "intervention", needs_gradients=True, forward=4.0,
                      backward=4.0, summary="integrated gradients of fidelity along branch scale")

    def __init__(self, steps: int = 4, samples: int | None = None, start: float = 0.0) -> None:
        self.steps = steps
        self.start = start
        self.samples = samples

    def run(self, ctx) -> Result:
        ctx.require_data(self.info.name)
        probe = ctx.probe(gates=True)
        alpha_buf = probe.gm._lw_alpha
        total = torch.zeros(len(ctx.sites), dtype=torch.float64)
        count = 0
        params = probe.parameters()
        flags = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(False)  # only d/d alpha is needed
            alpha_buf.requires_grad_(True)
            for j in range(self.steps):
                with torch.no_grad():
                    alpha_buf.fill_(self.start + (1 - self.start) * (j + 0.5) / self.steps)
                seen = 0
                for i, batch in ctx.share(self.samples):  # this rank's batches when sharded
                    outs, _ = probe(batch.inputs)
                    d = ctx.task.damage(outs, ctx.baseline[i], batch.labels)
                    (g,) = torch.autograd.grad(-d.sum(), [alpha_buf])
                    total += g.double()
                    seen += d.numel()
                    if j == 0:
                        count += d.numel()
                    if ctx.shard is None and self.samples is not None and seen >= self.samples:
                        break
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
            alpha_buf.requires_grad_(False)
            probe.set_gates()
        total, count = ctx.reduce_sum(total, count)  # over every rank when sharded
        cond = total * (1 - self.start) / (self.steps * max(count, 1))
        scores = ctx.nan_scores()
        for s in ctx.sites:
            if s.droppable:
                scores[s.path] = abs(float(cond[s.index]))
        signed = {s.path: float(cond[s.index]) for s in ctx.sites if s.droppable}
        return Result(scores, {"steps": self.steps, "start": self.start, "signed": signed,
                               "sum": float(cond.sum())})
