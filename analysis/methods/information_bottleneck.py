"""Information bottleneck (Tishby et al.): each hidden state T on the information plane,
I(X; T) (compression) and I(T; Y) (relevance, Y = the model's output or the labels), under a
Gaussian approximation on per-sample pooled features randomly projected to `width` dims.
A block scores the relevance of its update, I(D; Y) with D = h_out - h_in (by data processing
I(T_out; Y) only falls with depth, so it cannot rank blocks); an identity block scores 0."""

from __future__ import annotations

import math

import numpy as np
import torch

from layerwise.analysis.execution import site_requests
from layerwise.analysis.methods import MethodInfo, Requests, Result
from layerwise.analysis.stats import CrossMoments, pooled
from layerwise.analysis.tasks import first_float


def _logdet(c: np.ndarray, ridge: float) -> float:
    c = c + ridge * np.eye(len(c)) * max(np.trace(c) / max(len(c), 1), 1e-30)
    sign, val = np.linalg.slogdet(c)
    return float(val) if sign > 0 else math.nan


def gaussian_mi(m: CrossMoments, a: int, b: int, ridge: float = 1e-3) -> float:
    """I(a; b) in nats for jointly Gaussian representations a and b."""
    ca, cb = m.covariance([a]), m.covariance([b])
    cab = m.covariance([a, b])
    return 0.5 * (_logdet(ca, ridge) + _logdet(cb, ridge) - _logdet(cab, ridge))


def target_features(obs, ctx) -> torch.Tensor:
    """(B, F): one-hot labels when classification labels are given, else the pooled output."""
    if obs.batch.labels is not None and ctx.task.name == "classification":
        y = obs.batch.labels.reshape(obs.batch.size, -1)[:, 0].long()
        n = first_float(obs.outputs).shape[-1]
        return torch.nn.functional.one_hot(y, n).float()
    return pooled(first_float(obs.outputs))


class InformationBottleneck:
    """Gaussian information-plane coordinates per hidden state; update relevance per block."""

    info = MethodInfo("information_bottleneck", "shared", forward=1.0,
                      summary="information-plane relevance of each block's update")

    def __init__(self, width: int = 8, noise: float = 0.1) -> None:
        self.width = width
        self.noise = noise

    def requests(self, ctx) -> Requests:
        return site_requests(ctx)

    def start(self, ctx) -> dict:
        return {s.path: CrossMoments(self.width, ctx.seed + 101) for s in ctx.sites
                if s.droppable}

    def observe(self, state: dict, obs, ctx) -> None:
        y = target_features(obs, ctx)
        for s in ctx.sites:
            if s.droppable:
                x_in = pooled(obs.taps[s.hidden], obs.mask)
                x_out = pooled(obs.taps[s.output], obs.mask)
                state[s.path].update({0: x_in, 1: x_out, 2: y, 3: x_out - x_in})

    def finish(self, state: dict, ctx) -> Result:
        scores = ctx.nan_scores()
        plane = {}
        for path, m in state.items():
            rel_in, rel_out = gaussian_mi(m, 0, 2), gaussian_mi(m, 1, 2)
            empty = float(np.trace(m.covariance([3]))) <= 0.0
            scores[path] = 0.0 if empty else max(gaussian_mi(m, 3, 2), 0.0)
            # I(X; T) with Gaussian noise of `noise` x the feature scale added to T
            c = m.covariance([1])
            s2 = self.noise ** 2 * max(np.trace(c) / len(c), 1e-30)
            comp = 0.5 * float(np.linalg.slogdet(np.eye(len(c)) + c / s2)[1])
            plane[path] = {"I(X;T)": comp, "I(T;Y)": rel_out, "I(T_in;Y)": rel_in}
        return Result(scores, {"information_plane": plane})
