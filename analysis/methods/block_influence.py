"""Block influence (ShortGPT, Men et al. 2024): 1 - cos(block input, block output) per token."""

from __future__ import annotations

from layerwise.analysis.execution import site_requests
from layerwise.analysis.methods import MethodInfo, Requests, Result
from layerwise.analysis.stats import CosineStats, tokens


class BlockInfluence:
    """Mean over tokens of 1 - cos(h_in, h_out); an identity block scores 0."""

    info = MethodInfo("block_influence", "shared", forward=1.0,
                      summary="1 - cosine between a block's input and output hidden states")

    def requests(self, ctx) -> Requests:
        return site_requests(ctx)

    def start(self, ctx) -> dict:
        return {s.path: CosineStats() for s in ctx.sites if s.droppable}

    def observe(self, state: dict, obs, ctx) -> None:
        for s in ctx.sites:
            if s.droppable:
                state[s.path].update(tokens(obs.taps[s.hidden], obs.mask),
                                     tokens(obs.taps[s.output], obs.mask))

    def finish(self, state: dict, ctx) -> Result:
        scores = ctx.nan_scores()
        for path, st in state.items():
            scores[path] = 1.0 - st.mean_cos
        return Result(scores, {"mean_cosine": {p: st.mean_cos for p, st in state.items()}})
