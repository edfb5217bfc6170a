"""Attention analysis: head entropy and head importance from the softmax nodes inside each
block's attention layers (found in the graph, so any attention implementation that
decomposes to softmax is covered).

Head importance (Michel et al. 2019) is the gradient of the loss w.r.t. a mask on the head,
which equals sum(A * dL/dA) over the head's attention probabilities; it is squared per sample
and averaged (without labels the gradient's sign is random). A block scores the sum over its
heads; blocks without attention score NaN."""

from __future__ import annotations

import torch

from layerwise.analysis.execution import nodes_in
from layerwise.analysis.methods import MethodError, MethodInfo, Requests, Result
from layerwise.analysis.stats import Mean

aten = torch.ops.aten
SOFTMAX = {aten._softmax.default, aten.softmax.int, aten._safe_softmax.default}


def attention_nodes(ctx) -> dict[str, list[str]]:
    """Block path -> softmax node names inside attention layers of the block."""
    out = {}
    for s in ctx.sites:
        prefix = s.path + "."
        attn = [layer for layer in ctx.ir.layers
                if layer.path.startswith(prefix) and layer.kind == "attention"]
        names = set()
        for layer in attn:
            names |= set(nodes_in(ctx, layer.path, SOFTMAX))
        if names:
            out[s.path] = [n for n in nodes_in(ctx, s.path, SOFTMAX) if n in names]
    return out


class AttentionAnalysis:
    """Per head: mean attention entropy and importance; per block: summed importance."""

    info = MethodInfo("attention_analysis", "shared", needs_gradients=True, forward=1.0,
                      backward=1.0, summary="attention head entropy and head importance")

    def requests(self, ctx) -> Requests:
        nodes = {n for names in attention_nodes(ctx).values() for n in names}
        if not nodes:
            raise MethodError("attention_analysis found no softmax inside an attention layer; "
                              "it applies to transformer models only")
        return Requests(frozenset(nodes), frozenset(nodes))

    def start(self, ctx) -> dict:
        return {"importance": {}, "entropy": {}}

    def observe(self, state: dict, obs, ctx) -> None:
        for names in attention_nodes(ctx).values():
            for n in names:
                a, g = obs.taps[n].float(), obs.grads[n].float()
                if a.dim() < 3:
                    continue
                heads = a.shape[1] if a.dim() == 4 else 1
                a4 = a.reshape(a.shape[0], heads, -1, a.shape[-1])
                g4 = g.reshape(a4.shape)
                imp = (a4 * g4).sum((2, 3)).pow(2).sum(0)  # per head, summed over samples
                state["importance"].setdefault(n, Mean()).update_sum(imp, a.shape[0])
                ent = -(a4 * a4.clamp_min(1e-12).log()).sum(-1)  # (B, H, Q)
                mask = obs.mask
                if mask is not None and mask.shape == (a4.shape[0], a4.shape[2]):
                    w = mask.float()[:, None, :].expand_as(ent)
                    state["entropy"].setdefault(n, Mean()).update_sum(
                        (ent * w).sum((0, 2)), float(w[:, 0].sum()))
                else:
                    state["entropy"].setdefault(n, Mean()).update_sum(
                        ent.sum((0, 2)), ent.shape[0] * ent.shape[2])

    def finish(self, state: dict, ctx) -> Result:
        scores = ctx.nan_scores()
        heads = {}
        for path, names in attention_nodes(ctx).items():
            total = 0.0
            for n in names:
                imp = state["importance"][n].value
                total += float(sum(imp))
                heads[n] = {"block": path,
                            "importance": [float(x) for x in imp],
                            "entropy": [float(x) for x in state["entropy"][n].value]}
            scores[path] = total
        return Result(scores, {"heads": heads})
