"""Fisher information: per block, the Fisher pruning saliency 1/2 sum_p F_pp w_p^2 (Theis et
al. 2018), the second-order loss increase from zeroing the block's weights, with F the
diagonal Fisher from squared loss gradients (without labels: the model's own predictive
distribution). Detail: the Fisher trace of every parameter tensor."""

from __future__ import annotations

from layerwise.analysis.execution import block_params
from layerwise.analysis.methods import MethodInfo, Requests, Result
from layerwise.analysis.stats import Mean


class FisherInformation:
    """1/2 sum_p E[g_p^2] w_p^2 over the block's parameters; per-tensor traces as detail."""

    info = MethodInfo("fisher_information", "shared", needs_gradients=True, forward=1.0,
                      backward=1.0, summary="diagonal Fisher information of block parameters")

    def requests(self, ctx) -> Requests:
        return Requests(params=True)

    def start(self, ctx) -> dict:
        return {s.path: Mean() for s in ctx.sites} | {"_tensors": {}}

    def observe(self, state: dict, obs, ctx) -> None:
        for s in ctx.sites:
            total = 0.0
            for name in block_params(ctx, s.path, obs.param_grads):
                g2 = obs.param_grads[name].double().pow(2)
                total += 0.5 * float((g2 * obs.params[name].double().pow(2)).sum())
                state["_tensors"].setdefault(name, Mean()).update(float(g2.sum()))
            state[s.path].update(total)

    def finish(self, state: dict, ctx) -> Result:
        scores = {s.path: state[s.path].value for s in ctx.sites}
        return Result(scores, {"per_tensor": {k: m.value for k, m in state["_tensors"].items()}})
