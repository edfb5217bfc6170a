"""Layer correlation: linear CKA (Kornblith et al. 2019) between hidden states, from streaming
cross-moments over tokens. A block scores 1 - CKA(input, output) (0 = the block leaves the
representation unchanged up to rotation and scale). Redundancy detail: the CKA matrix between
the hidden states of each chain of blocks, and the CKA between consecutive blocks' updates;
the most similar pair of updates is reported as the most redundant pair."""

from __future__ import annotations

import math

from layerwise.analysis.methods import MethodInfo, Requests, Result
from layerwise.analysis.methods.angular_distance import chain_requests, chains
from layerwise.analysis.stats import CrossMoments, tokens


class LayerCorrelation:
    """1 - CKA(h_in, h_out) per block; CKA matrices and the most redundant pair as detail."""

    info = MethodInfo("layer_correlation", "shared", forward=1.0,
                      summary="linear CKA between layers: representation change and redundancy")

    def __init__(self, width: int = 128) -> None:
        self.width = width

    def requests(self, ctx) -> Requests:
        return chain_requests(ctx)

    def start(self, ctx) -> dict:
        return {str(c): CrossMoments(self.width, ctx.seed) for c in range(len(chains(ctx.sites)))}

    def observe(self, state: dict, obs, ctx) -> None:
        for c, chain in enumerate(chains(ctx.sites)):
            hs = [tokens(obs.taps[chain[0].hidden], obs.mask)]
            hs += [tokens(obs.taps[s.output], obs.mask) for s in chain]
            k = len(chain)
            reps = {i: h for i, h in enumerate(hs)}  # 0..k hidden states
            reps.update({k + 1 + i: hs[i + 1] - hs[i] for i in range(k)})  # updates
            pairs = {(a, b) for a in range(k + 1) for b in range(a, k + 1)}
            pairs |= {(k + 1 + i, k + 1 + j) for i in range(k) for j in range(i, min(i + 2, k))}
            state[str(c)].update(reps, pairs)

    def finish(self, state: dict, ctx) -> Result:
        scores = ctx.nan_scores()
        detail: dict = {"hidden_cka": {}, "update_cka": {}, "most_redundant_pair": None}
        best = -1.0
        for c, chain in enumerate(chains(ctx.sites)):
            m = state[str(c)]
            k = len(chain)
            for i, s in enumerate(chain):
                scores[s.path] = 1.0 - m.cka(i, i + 1)
            detail["hidden_cka"][str(c)] = {
                "states": [chain[0].hidden] + [s.output for s in chain],
                "matrix": [[m.cka(a, b) for b in range(k + 1)] for a in range(k + 1)]}
            for i in range(k - 1):
                v = m.cka(k + 1 + i, k + 2 + i)
                key = f"{chain[i].path}|{chain[i + 1].path}"
                detail["update_cka"][key] = v
                if not math.isnan(v) and v > best:
                    best = v
                    detail["most_redundant_pair"] = [chain[i].path, chain[i + 1].path]
        return Result(scores, detail)
