"""The cpp_ext kernels analysis uses (cosine sums, KSG / binned mutual information), each with
the NumPy path beside it; the native one is used when the build has it."""

from __future__ import annotations

import numpy as np
from scipy.special import digamma

from layerwise import cpp_ext


def _kernel(name: str):
    return getattr(cpp_ext.native, name, None) if cpp_ext.native is not None else None


def cosine_sums(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None
                ) -> tuple[float, float, int]:
    """(sum of cos, sum of arccos(cos)/pi, count) over the rows of two (N, D) arrays.

    Rows where either side has zero norm, or where `mask` is False, are not counted.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)
    kernel = _kernel("cosine_sums")
    if kernel is not None:
        m = None if mask is None else np.ascontiguousarray(mask.reshape(-1), dtype=np.uint8)
        cos, ang, count, _zero, _bad = kernel(x.reshape(-1), y.reshape(-1), m, x.shape[0],
                                              x.shape[1], 1)
        return float(cos), float(ang), int(count)
    if mask is not None:
        x, y = x[mask.reshape(-1)], y[mask.reshape(-1)]
    nx = np.linalg.norm(x.astype(np.float64), axis=1)
    ny = np.linalg.norm(y.astype(np.float64), axis=1)
    keep = (nx > 0) & (ny > 0)
    cos = (x[keep].astype(np.float64) * y[keep]).sum(1) / (nx[keep] * ny[keep])
    cos = np.clip(cos, -1.0, 1.0)
    return float(cos.sum()), float((np.arccos(cos) / np.pi).sum()), int(keep.sum())


def mutual_information_ksg(x: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    """KSG estimator 1 of I(x; y) in nats for paired scalar samples (needs len > k)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    y = np.ascontiguousarray(y, dtype=np.float32).reshape(-1)
    kernel = _kernel("mutual_information_ksg")
    if kernel is not None:
        return float(kernel(x, y, k))
    n = x.shape[0]
    dx = np.abs(x[:, None] - x[None, :])
    dy = np.abs(y[:, None] - y[None, :])
    d = np.maximum(dx, dy)
    np.fill_diagonal(d, np.inf)
    eps = np.sort(d, axis=1)[:, k - 1]
    np.fill_diagonal(dx, np.inf)
    np.fill_diagonal(dy, np.inf)
    strict = eps[:, None] > 0
    nx = np.where(strict, dx < eps[:, None], dx <= eps[:, None]).sum(1)
    ny = np.where(strict, dy < eps[:, None], dy <= eps[:, None]).sum(1)
    return float(digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1)))
