"""Uncertainty quantification: the output variance a block's update would cause under
independent (dropout-like) noise on its elements, sum_i (g_i * delta_i)^2 with g the gradient
of a random output projection (so E[g g^T] = J^T J). An identity block adds no variance.
With classification outputs the detail also gives the model's predictive entropy."""

from __future__ import annotations

from layerwise.analysis.execution import site_requests
from layerwise.analysis.methods import MethodInfo, Requests, Result
from layerwise.analysis.stats import Mean
from layerwise.analysis.tasks import first_float


class UncertaintyQuantification:
    """Per-block predictive variance under multiplicative noise on the block's update."""

    info = MethodInfo("uncertainty_quantification", "shared", needs_gradients=True,
                      forward=1.0, backward=1.0,
                      summary="output variance caused by noise on the block's update")

    def requests(self, ctx) -> Requests:
        return site_requests(ctx, grads_out=True)

    def start(self, ctx) -> dict:
        return {"var": {}, "entropy": Mean()}

    def observe(self, state: dict, obs, ctx) -> None:
        for s in ctx.sites:
            if s.droppable:
                delta = obs.taps[s.output].float() - obs.taps[s.hidden].float()
                g = obs.grads[s.output].float()
                b = delta.shape[0]
                v = (g * delta).pow(2).reshape(b, -1).sum(1)
                state["var"].setdefault(s.path, Mean()).update_sum(v.sum(), b)
        if ctx.task.name in ("classification", "language-modeling"):
            logits = first_float(obs.outputs).float()
            p = logits.log_softmax(-1)
            ent = -(p.exp() * p).sum(-1)
            state["entropy"].update_sum(ent.sum(), ent.numel())

    def finish(self, state: dict, ctx) -> Result:
        scores = ctx.nan_scores()
        for path, m in state["var"].items():
            scores[path] = m.value
        detail = {}
        if state["entropy"].count:
            detail["predictive_entropy"] = state["entropy"].value
        return Result(scores, detail)
