"""Streaming histograms of activations whose range grows as batches arrive.

The range [0, hi) of an absolute-value histogram only ever doubles; doubling merges bins
pairwise, so no count is lost or smeared when the range grows.
"""

from __future__ import annotations

import math

import numpy as np

from layerwise import cpp_ext
from layerwise.errors import LayerwiseError


def as_f32(data: np.ndarray) -> np.ndarray:
    """Flat contiguous float32 view or copy of `data` (one explicit conversion)."""
    return np.ascontiguousarray(np.asarray(data), dtype=np.float32).reshape(-1)


def scan_range(data: np.ndarray) -> tuple[float, float, int]:
    """(min, max, nonfinite_count) of the finite values of `data`."""
    flat = as_f32(data)
    if cpp_ext.native is not None:
        return cpp_ext.native.scan_range(flat)
    cpp_ext.warn_if_missing()
    return scan_range_numpy(flat)


def scan_range_numpy(flat: np.ndarray) -> tuple[float, float, int]:
    """NumPy reference of `scan_range`."""
    finite = np.isfinite(flat)
    bad = int(flat.size - finite.sum())
    vals = flat[finite] if bad else flat
    if vals.size == 0:
        return math.inf, -math.inf, bad
    return float(vals.min()), float(vals.max()), bad


def accumulate_numpy(flat: np.ndarray, counts: np.ndarray, lo: float, hi: float,
                     absolute: bool) -> tuple[int, int]:
    """NumPy reference of the native `accumulate_histogram` (same binning and clamping)."""
    v = np.abs(flat).astype(np.float64) if absolute else flat.astype(np.float64)
    bins = counts.size
    pos = (v - lo) * (bins / (hi - lo))
    below = int((pos < 0).sum())
    above = int((pos >= bins).sum())
    idx = np.clip(np.floor(pos), 0, bins - 1).astype(np.int64)
    counts += np.bincount(idx, minlength=bins).astype(np.int64)
    return below, above


class StreamingHistogram:
    """Histogram of |x| over [0, hi) with a fixed bin count; `hi` doubles to fit new data.

    Assumes finite input: NaN or Inf raises, since a threshold computed over them is meaningless.
    """

    def __init__(self, bins: int = 2048) -> None:
        if bins < 2 or bins % 2:
            raise LayerwiseError(f"histogram needs an even bin count >= 2, got {bins}")
        self.counts = np.zeros(bins, dtype=np.int64)
        self.hi = 0.0
        self.total = 0

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.hi, self.counts.size + 1)

    def update(self, data: np.ndarray) -> None:
        flat = as_f32(data)
        if flat.size == 0:
            raise LayerwiseError("cannot add an empty tensor to a histogram")
        lo, hi, bad = scan_range(flat)
        if bad:
            raise LayerwiseError(f"tensor holds {bad} NaN/Inf values; fix the model or input")
        top = max(abs(lo), abs(hi))
        if self.hi == 0.0:
            self.hi = top if top > 0 else 1.0
        while top >= self.hi:
            self._double()
        if cpp_ext.native is not None:
            cpp_ext.native.accumulate_histogram(flat, self.counts, 0.0, self.hi, True)
        else:
            cpp_ext.warn_if_missing()
            accumulate_numpy(flat, self.counts, 0.0, self.hi, True)
        self.total += flat.size

    def _double(self) -> None:
        """Double the range: bins 2i and 2i+1 merge into bin i, upper half becomes empty."""
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts[:] = 0
        self.counts[: merged.size] = merged
        self.hi *= 2.0

    def quantile(self, q: float) -> float:
        """Upper edge of the bin where the cumulative count reaches fraction q of the values."""
        if self.total == 0:
            raise LayerwiseError("histogram is empty")
        cum = np.cumsum(self.counts)
        idx = int(np.searchsorted(cum, q * self.total, side="left"))
        return float(self.edges[min(idx, self.counts.size - 1) + 1])
