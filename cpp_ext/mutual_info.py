"""Mutual information between two scalar variables from paired samples, in nats.

Two estimators: the binned plug-in estimator (equal-width bins over each variable's observed
range; biased upwards for few samples per cell) and Kraskov-Stoegbauer-Grassberger's k-NN
estimator 1 (max-norm neighbours; ties broken by the rule stated in mutual_info.h).
"""

from __future__ import annotations

import numpy as np

from layerwise import cpp_ext
from layerwise.base.errors import LayerwiseError
from layerwise.cpp_ext.histogram import scan_range
from layerwise.cpp_ext.inputs import as_array, as_f32, reject_nonfinite

EULER_GAMMA = 0.57721566490153286061


def _pair(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    fx, fy = as_f32(as_array(x, what)), as_f32(as_array(y, what))
    if fx.size != fy.size:
        raise LayerwiseError(f"{what}: x has {fx.size} values, y has {fy.size}; pass pairs")
    return fx, fy


def _grid(v: np.ndarray, bins: int, what: str) -> tuple[float, float]:
    lo, hi, bad = scan_range(v)
    reject_nonfinite(bad, what)
    return lo, (hi - lo) / bins


def _check_bins(bins: int) -> None:
    if bins < 1:
        raise LayerwiseError(f"mutual_information: bins must be >= 1, got {bins}")


def mutual_information(x: np.ndarray, y: np.ndarray, bins: int = 64) -> float:
    """Binned plug-in MI of paired samples x, y (flattened), `bins` equal bins per variable."""
    what = "mutual_information"
    _check_bins(bins)
    fx, fy = _pair(x, y, what)
    if cpp_ext.native is None:
        cpp_ext.warn_if_missing()
        return mutual_information_numpy(fx, fy, bins)
    (xlo, xw), (ylo, yw) = _grid(fx, bins, what), _grid(fy, bins, what)
    counts = np.zeros((bins, bins), dtype=np.int64)
    cpp_ext.native.joint_histogram(fx, fy, xlo, xw, ylo, yw, counts)
    return cpp_ext.native.mutual_information_from_counts(counts)


def mutual_information_numpy(x: np.ndarray, y: np.ndarray, bins: int = 64) -> float:
    """NumPy reference of `mutual_information` (same bins, same clamping)."""
    what = "mutual_information"
    _check_bins(bins)
    fx, fy = _pair(x, y, what)
    idx = []
    for v in (fx, fy):
        if not np.isfinite(v).all():
            reject_nonfinite(int((~np.isfinite(v)).sum()), what)
        lo, hi = float(v.min()), float(v.max())
        width = (hi - lo) / bins
        scale = 1.0 / width if width > 0 else 0.0
        idx.append(np.clip(np.floor((v.astype(np.float64) - lo) * scale), 0, bins - 1)
                   .astype(np.int64))
    counts = np.bincount(idx[0] * bins + idx[1], minlength=bins * bins).reshape(bins, bins)
    total = counts.sum()
    px, py = counts.sum(axis=1), counts.sum(axis=0)
    a, b = np.nonzero(counts)
    c = counts[a, b].astype(np.float64)
    return float(np.sum(c * np.log(c * total / (px[a].astype(np.float64) * py[b]))) / total)


def _check_ksg(fx: np.ndarray, fy: np.ndarray, k: int) -> None:
    if k < 1 or fx.size <= k:
        raise LayerwiseError(f"mutual_information_ksg: need k >= 1 and more than k samples, "
                             f"got k={k} with {fx.size} samples")
    for v in (fx, fy):
        reject_nonfinite(scan_range(v)[2], "mutual_information_ksg")


def mutual_information_ksg(x: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    """KSG estimator 1 of MI (nats) with k neighbours; O(n log n) for continuous data."""
    fx, fy = _pair(x, y, "mutual_information_ksg")
    _check_ksg(fx, fy, k)
    if cpp_ext.native is None:
        cpp_ext.warn_if_missing()
        return mutual_information_ksg_numpy(fx, fy, k)
    return cpp_ext.native.mutual_information_ksg(fx, fy, k)


def _digamma_table(n: int) -> np.ndarray:
    """psi(m) for m = 0..n (entry 0 unused), by psi(m + 1) = psi(m) + 1 / m."""
    steps = np.concatenate([[0.0, -EULER_GAMMA], 1.0 / np.arange(1, n)])
    return np.cumsum(steps)


def mutual_information_ksg_numpy(x: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    """NumPy reference of `mutual_information_ksg`: brute-force O(n^2) distances."""
    fx, fy = _pair(x, y, "mutual_information_ksg")
    _check_ksg(fx, fy, k)
    xd, yd = fx.astype(np.float64), fy.astype(np.float64)
    dx = np.abs(xd[:, None] - xd[None, :])
    dy = np.abs(yd[:, None] - yd[None, :])
    dist = np.maximum(dx, dy)
    np.fill_diagonal(dist, np.inf)
    eps = np.partition(dist, k - 1, axis=1)[:, k - 1][:, None]
    zero = eps == 0
    nx = np.where(zero, dx <= 0, dx < eps).sum(axis=1) - 1
    ny = np.where(zero, dy <= 0, dy < eps).sum(axis=1) - 1
    n = xd.size
    psi = _digamma_table(n + 1)
    return float(psi[k] + psi[n] - np.mean(psi[nx + 1] + psi[ny + 1]))
