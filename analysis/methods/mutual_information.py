"""Mutual information: per block, I(D; Y) between the block's update D = h_out - h_in and the
target Y, with the KSG estimator (cpp_ext kernel) on scalar random projections of per-sample
pooled values; Y is the label (or a random projection of the model's output without labels).
Averaged over `directions` projections and clipped at 0. An identity block (D = 0) scores 0.
(I(T_out; Y) itself cannot rank blocks: by data processing it only falls with depth.)
Detail: I(T; Y) of every block's output."""

from __future__ import annotations

import torch

from layerwise.analysis.execution import site_requests
from layerwise.analysis.methods import MethodError, MethodInfo, Requests, Result
from layerwise.analysis.native import mutual_information_ksg
from layerwise.analysis.stats import pooled
from layerwise.analysis.tasks import first_float


class MutualInformation:
    """KSG mutual information of each block's update with the target."""

    info = MethodInfo("mutual_information", "shared", forward=1.0,
                      summary="KSG mutual information of the block update with the target")

    def __init__(self, directions: int = 8, k: int = 3) -> None:
        self.directions = directions
        self.k = k

    def requests(self, ctx) -> Requests:
        return site_requests(ctx)

    def start(self, ctx) -> dict:
        return {"y": [], "in": {}, "out": {}}

    def _dirs(self, dim: int, ctx) -> torch.Tensor:
        g = torch.Generator().manual_seed(ctx.seed + 31 * dim)
        return torch.randn(dim, self.directions, generator=g)

    def observe(self, state: dict, obs, ctx) -> None:
        if obs.batch.labels is not None:
            y = obs.batch.labels.reshape(obs.batch.size, -1)[:, :1].float()
            y = y.expand(-1, self.directions)
        else:
            out = pooled(first_float(obs.outputs))
            y = out @ self._dirs(out.shape[1], ctx)
        state["y"].append(y)
        for s in ctx.sites:
            if s.droppable:
                x_in = pooled(obs.taps[s.hidden], obs.mask)
                x_out = pooled(obs.taps[s.output], obs.mask)
                d = self._dirs(x_in.shape[1], ctx)
                state["in"].setdefault(s.path, []).append(x_in @ d)
                state["out"].setdefault(s.path, []).append(x_out @ d)

    def finish(self, state: dict, ctx) -> Result:
        y = torch.cat(state["y"]).double()
        if y.shape[0] <= self.k + 1:
            raise MethodError(f"mutual_information needs more than {self.k + 1} samples")
        y = y + 1e-9 * torch.randn(y.shape, generator=torch.Generator().manual_seed(ctx.seed))
        scores = ctx.nan_scores()
        relevance = {}
        for path in state["in"]:
            xi, xo = torch.cat(state["in"][path]), torch.cat(state["out"][path])
            d = xo - xi
            if float(d.abs().max()) == 0.0:
                mi_d = [0.0]
            else:
                mi_d = [mutual_information_ksg(d[:, j].numpy(), y[:, j].numpy(), self.k)
                        for j in range(self.directions)]
            mi_out = [mutual_information_ksg(xo[:, j].numpy(), y[:, j].numpy(), self.k)
                      for j in range(self.directions)]
            scores[path] = max(sum(mi_d) / len(mi_d), 0.0)
            relevance[path] = {"I(D;Y)": sum(mi_d) / len(mi_d),
                               "I(T_out;Y)": sum(mi_out) / len(mi_out)}
        return Result(scores, {"relevance": relevance, "samples": int(y.shape[0])})
