"""Streaming, mergeable statistics: every accumulator has `update` and `merge`, so batches can
be folded in one at a time and partial results from several workers added together (an
all-reduce is a sum of the same fields). Activations never need to be held in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from layerwise.analysis.native import cosine_sums


def tokens(t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N, features) rows of an activation: (B, D) as is, (B, T, D) by token, (B, C, *spatial)
    by position with channels as features. `mask` (B, T) keeps tokens of a 3-D tensor."""
    t = t.detach().float()
    if t.dim() <= 1:
        return t.reshape(-1, 1)
    if t.dim() == 2:
        return t
    if t.dim() == 3:
        rows = t.reshape(-1, t.shape[-1])
        if mask is not None and tuple(mask.shape) == tuple(t.shape[:2]):
            rows = rows[mask.reshape(-1).bool()]
        return rows
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def pooled(t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, features): the mean over tokens or positions of each sample."""
    t = t.detach().float()
    if t.dim() <= 2:
        return t.reshape(t.shape[0], -1) if t.dim() == 2 else t.reshape(-1, 1)
    if t.dim() == 3:
        if mask is not None and tuple(mask.shape) == tuple(t.shape[:2]):
            m = mask.float().unsqueeze(-1)
            return (t * m).sum(1) / m.sum(1).clamp(min=1)
        return t.mean(1)
    return t.flatten(2).mean(2)


def per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) sums of a * b over every non-batch dimension."""
    return (a.float() * b.float()).reshape(a.shape[0], -1).sum(1)


@dataclass
class Mean:
    """Running mean of a scalar or array."""

    total: np.ndarray | float = 0.0
    count: float = 0.0

    def update(self, value, weight: float = 1.0) -> None:
        v = value.detach().double().cpu().numpy() if isinstance(value, torch.Tensor) else value
        self.total = self.total + np.asarray(v, dtype=np.float64) * weight
        self.count += weight

    def update_sum(self, total, count: float) -> None:
        """Add a sum of `count` values."""
        self.update(total, 1.0)
        self.count += count - 1.0

    def merge(self, other: Mean) -> None:
        self.total = self.total + other.total
        self.count += other.count

    @property
    def value(self):
        if self.count == 0:
            return math.nan
        v = np.asarray(self.total, dtype=np.float64) / self.count
        return float(v) if v.ndim == 0 else v


@dataclass
class CosineStats:
    """Mean cosine and mean angular distance between paired rows (cpp_ext kernel)."""

    cos: float = 0.0
    ang: float = 0.0
    count: int = 0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        c, a, n = cosine_sums(x.cpu().numpy(), y.cpu().numpy())
        self.cos += c
        self.ang += a
        self.count += n

    def merge(self, other: CosineStats) -> None:
        self.cos += other.cos
        self.ang += other.ang
        self.count += other.count

    @property
    def mean_cos(self) -> float:
        return self.cos / self.count if self.count else math.nan

    @property
    def mean_angle(self) -> float:
        return self.ang / self.count if self.count else math.nan


def projection(dim: int, width: int, seed: int) -> torch.Tensor | None:
    """A fixed Gaussian (dim, width) projection, or None when dim <= width (keep as is)."""
    if dim <= width:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, width, generator=g) / math.sqrt(width)


@dataclass
class CrossMoments:
    """First and second moments of k representations over shared rows: enough for linear CKA
    between every pair (Kornblith et al. 2019) and Gaussian covariances.

    Representations wider than `width` features are randomly projected to `width` first
    (Johnson-Lindenstrauss keeps linear CKA close)."""

    width: int = 256
    seed: int = 0
    n: float = 0.0
    sums: dict[int, np.ndarray] = field(default_factory=dict)
    cross: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    _proj: dict[int, torch.Tensor | None] = field(default_factory=dict)

    def update(self, reps: dict[int, torch.Tensor],
               pairs: set[tuple[int, int]] | None = None) -> None:
        """`reps`: index -> (N, D_i) rows, the same N rows for every index; `pairs` (a <= b)
        limits which cross-products are kept (default: all)."""
        proj = {}
        for i, r in reps.items():
            if i not in self._proj:
                self._proj[i] = projection(r.shape[1], self.width, self.seed + 7919 * r.shape[1])
            p = self._proj[i]
            proj[i] = (r.float() @ p if p is not None else r.float())
        keys = sorted(proj)
        self.n += next(iter(proj.values())).shape[0] if proj else 0
        for a_i, a in enumerate(keys):
            self.sums[a] = self.sums.get(a, 0) + proj[a].double().sum(0).numpy()
            for b in keys[a_i:]:
                if pairs is None or (a, b) in pairs or a == b:
                    prod = (proj[a].T @ proj[b]).double().numpy()
                    self.cross[(a, b)] = self.cross.get((a, b), 0) + prod

    def merge(self, other: CrossMoments) -> None:
        self.n += other.n
        for k, v in other.sums.items():
            self.sums[k] = self.sums.get(k, 0) + v
        for k, v in other.cross.items():
            self.cross[k] = self.cross.get(k, 0) + v

    def centered(self, a: int, b: int) -> np.ndarray:
        """Centered cross-product matrix X_a^T X_b - n mu_a mu_b^T."""
        c = self.cross[(a, b)] if (a, b) in self.cross else self.cross[(b, a)].T
        return c - np.outer(self.sums[a], self.sums[b]) / max(self.n, 1.0)

    def cka(self, a: int, b: int) -> float:
        """Linear CKA between representations a and b."""
        xy = np.sum(self.centered(a, b) ** 2)
        xx = np.sqrt(np.sum(self.centered(a, a) ** 2))
        yy = np.sqrt(np.sum(self.centered(b, b) ** 2))
        return float(xy / (xx * yy)) if xx > 0 and yy > 0 else math.nan

    def covariance(self, keys: list[int]) -> np.ndarray:
        """Joint covariance of the listed representations (concatenated features)."""
        blocks = [[self.centered(a, b) for b in keys] for a in keys]
        return np.block(blocks) / max(self.n - 1.0, 1.0)
