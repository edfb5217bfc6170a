"""Gradient-based (first-order Taylor, Molchanov et al. 2019): per block the sum over its
parameters of |w * dL/dw|, the estimated loss change from zeroing each weight."""

from __future__ import annotations

from layerwise.analysis.execution import block_params
from layerwise.analysis.methods import MethodInfo, Requests, Result
from layerwise.analysis.stats import Mean


class GradientBased:
    """sum |w * g| over the block's parameters; per output unit (rows of each weight) as detail."""

    info = MethodInfo("gradient_based", "shared", needs_gradients=True, forward=1.0,
                      backward=1.0, summary="Taylor importance |w * g| of block parameters")

    def requests(self, ctx) -> Requests:
        return Requests(params=True)

    def start(self, ctx) -> dict:
        return {s.path: Mean() for s in ctx.sites} | {"_units": {}}

    def observe(self, state: dict, obs, ctx) -> None:
        for s in ctx.sites:
            total = 0.0
            for name in block_params(ctx, s.path, obs.param_grads):
                t = (obs.params[name].double() * obs.param_grads[name].double()).abs()
                total += float(t.sum())
                if t.dim() >= 2:  # output units: neurons, channels
                    state["_units"].setdefault(name, Mean()).update(t.flatten(1).sum(1))
            state[s.path].update(total)

    def finish(self, state: dict, ctx) -> Result:
        scores = {s.path: state[s.path].value for s in ctx.sites}
        units = {k: [round(float(x), 8) for x in m.value] for k, m in state["_units"].items()}
        return Result(scores, {"per_unit": units})
