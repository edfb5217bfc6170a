"""Gradient flow: how much gradient a block's residual branch adds on the way back,
|dL/dh_in - dL/dh_out| / |dL/dh_out| per sample (0 for an identity block), with the gradient
norm profile across blocks as detail (vanishing or exploding gradients)."""

from __future__ import annotations

from layerwise.analysis.execution import site_requests
from layerwise.analysis.methods import MethodInfo, Requests, Result
from layerwise.analysis.stats import Mean


class GradientFlow:
    """Relative gradient contribution of each block's branch."""

    info = MethodInfo("gradient_flow", "shared", needs_gradients=True, forward=1.0,
                      backward=1.0, summary="gradient added by each block's branch")

    def requests(self, ctx) -> Requests:
        return site_requests(ctx, grads_in=True, grads_out=True)

    def start(self, ctx) -> dict:
        return {"branch": {}, "out": {}}

    def observe(self, state: dict, obs, ctx) -> None:
        for s in ctx.sites:
            if s.droppable:
                gi, go = obs.grads[s.hidden], obs.grads[s.output]
                b = gi.shape[0]
                state["branch"].setdefault(s.path, Mean()).update_sum(
                    (gi - go).reshape(b, -1).norm(dim=1).sum(), b)
                state["out"].setdefault(s.path, Mean()).update_sum(
                    go.reshape(b, -1).norm(dim=1).sum(), b)

    def finish(self, state: dict, ctx) -> Result:
        scores = ctx.nan_scores()
        for path, m in state["branch"].items():
            scores[path] = m.value / max(state["out"][path].value, 1e-30)
        return Result(scores, {"grad_norm_out": {p: m.value for p, m in state["out"].items()}})
