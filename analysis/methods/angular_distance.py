"""Angular distance over n-block spans (Gromov et al. 2024, "The unreasonable ineffectiveness
of the deeper layers"): d(l, l+n) = arccos(cos(h_l, h_{l+n})) / pi averaged over tokens.

Per block the score is the 1-block distance; the detail gives, for every span length n, the
span whose removal changes the hidden state least (the one to drop)."""

from __future__ import annotations

from layerwise.analysis.methods import MethodInfo, Requests, Result
from layerwise.analysis.stats import CosineStats, tokens


def chains(sites) -> list[list]:
    """Runs of consecutive droppable sites where each block's input is the previous output."""
    out: list[list] = []
    for s in sites:
        if not s.droppable:
            continue
        if out and out[-1][-1].output == s.hidden:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def chain_requests(ctx) -> Requests:
    """Taps for every chain of blocks: its first hidden-state input and each block's output."""
    names = set()
    for chain in chains(ctx.sites):
        names |= {chain[0].hidden, *[s.output for s in chain]}
    return Requests(frozenset(names))


class AngularDistance:
    """Angular distance between hidden states n blocks apart, for every n."""

    info = MethodInfo("angular_distance", "shared", forward=1.0,
                      summary="arccos similarity of hidden states across n-block spans")

    def requests(self, ctx) -> Requests:
        return chain_requests(ctx)

    def start(self, ctx) -> dict:
        state = {}
        for c, chain in enumerate(chains(ctx.sites)):
            k = len(chain)
            for a in range(k + 1):
                for b in range(a + 1, k + 1):
                    state[f"{c}:{a}:{b}"] = CosineStats()
        return state

    def observe(self, state: dict, obs, ctx) -> None:
        for c, chain in enumerate(chains(ctx.sites)):
            states = [chain[0].hidden] + [s.output for s in chain]
            rows = [tokens(obs.taps[n], obs.mask) for n in states]
            for a in range(len(rows)):
                for b in range(a + 1, len(rows)):
                    state[f"{c}:{a}:{b}"].update(rows[a], rows[b])

    def finish(self, state: dict, ctx) -> Result:
        scores = ctx.nan_scores()
        spans: dict[int, dict] = {}
        for c, chain in enumerate(chains(ctx.sites)):
            for a, s in enumerate(chain):
                scores[s.path] = state[f"{c}:{a}:{a + 1}"].mean_angle
            for n in range(1, len(chain) + 1):
                for a in range(len(chain) - n + 1):
                    d = state[f"{c}:{a}:{a + n}"].mean_angle
                    best = spans.get(n)
                    if best is None or d < best["distance"]:
                        spans[n] = {"distance": d,
                                    "blocks": [s.path for s in chain[a:a + n]]}
        return Result(scores, {"best_span_to_drop": {str(n): v for n, v in spans.items()}})
