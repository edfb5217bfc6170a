"""Neuron activation patterns: per block, the size of its update relative to its input
(E|h_out - h_in| / E|h_in| over tokens); per neuron of each activation function inside the
block, the mean activation and the firing rate (dead neurons fire on < 1% of tokens)."""

from __future__ import annotations

import torch

from layerwise.analysis.execution import nodes_in, site_requests
from layerwise.analysis.methods import MethodInfo, Requests, Result
from layerwise.analysis.stats import Mean, tokens

aten = torch.ops.aten
ACTIVATIONS = {aten.relu.default, aten.gelu.default, aten.silu.default, aten.sigmoid.default,
               aten.tanh.default, aten.hardswish.default, aten.hardtanh.default,
               aten.elu.default, aten.leaky_relu.default, aten.mish.default}


class NeuronActivation:
    """Relative update size per block; neuron statistics as detail."""

    info = MethodInfo("neuron_activation", "shared", forward=1.0,
                      summary="relative update size and per-neuron activation statistics")

    def _acts(self, ctx) -> dict[str, list[str]]:
        return {s.path: nodes_in(ctx, s.path, ACTIVATIONS) for s in ctx.sites}

    def requests(self, ctx) -> Requests:
        base = site_requests(ctx)
        acts = {n for names in self._acts(ctx).values() for n in names}
        return Requests(base.taps | acts)

    def start(self, ctx) -> dict:
        return {"update": {}, "input": {}, "mean": {}, "firing": {}}

    def observe(self, state: dict, obs, ctx) -> None:
        for s in ctx.sites:
            if s.droppable:
                x = tokens(obs.taps[s.hidden], obs.mask)
                y = tokens(obs.taps[s.output], obs.mask)
                state["update"].setdefault(s.path, Mean()).update_sum(
                    (y - x).norm(dim=1).sum(), x.shape[0])
                state["input"].setdefault(s.path, Mean()).update_sum(
                    x.norm(dim=1).sum(), x.shape[0])
        for names in self._acts(ctx).values():
            for n in names:
                a = tokens(obs.taps[n], obs.mask if obs.taps[n].dim() == 3 else None)
                state["mean"].setdefault(n, Mean()).update_sum(a.abs().sum(0), a.shape[0])
                state["firing"].setdefault(n, Mean()).update_sum((a > 0).float().sum(0),
                                                                 a.shape[0])

    def finish(self, state: dict, ctx) -> Result:
        scores = ctx.nan_scores()
        for path, m in state["update"].items():
            scores[path] = m.value / max(state["input"][path].value, 1e-12)
        neurons = {}
        for path, names in self._acts(ctx).items():
            for n in names:
                fire = state["firing"][n].value
                neurons[n] = {"block": path, "neurons": len(fire),
                              "dead_fraction": float((fire < 0.01).mean()),
                              "mean_abs": [round(float(v), 6) for v in state["mean"][n].value]}
        return Result(scores, {"neurons": neurons})
