"""Streaming histograms of activations, per tensor or per channel, |x| or signed.

The range grows as batches arrive without losing or smearing counts: the bin width grows by the
smallest integer factor that fits and the lower edge moves by whole old bins, so every old bin
falls inside exactly one new bin (|x| histograms keep their lower edge at 0).
Values with |x| >= `saturation` (default 1e30; additive attention masks hold -3.4e38) are
counted as saturated and kept out of the bins, so no finite histogram has to hold them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from layerwise import cpp_ext
from layerwise.base.errors import LayerwiseError
from layerwise.cpp_ext.inputs import (
    FLOAT32_MAX,
    as_array,
    as_f32,
    layout,
    reject_nonfinite,
    saturation_f32,
)

DEFAULT_SATURATION = 1e30

__all__ = [
    "DEFAULT_SATURATION",
    "Histogram",
    "StreamingHistogram",
    "as_f32",
    "scan_range",
    "scan_range_numpy",
    "update_histogram_numpy",
]


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


def _regrid_numpy(counts: np.ndarray, lo: float, width: float, bottom: float, top: float, *,
                  absolute: bool) -> tuple[float, float]:
    """Reference of the native regrid: returns the new (lo, width), merges `counts` in place."""
    nb = float(counts.size)
    if width == 0.0:
        span = top - bottom
        if not span > 0.0:
            span = abs(top) if top != 0.0 else 1.0
        return bottom, span / nb
    hi = lo + nb * width
    if bottom >= lo and top <= hi:
        return lo, width
    low, high = min(bottom, lo), max(top, hi)
    factor = max(1.0, float(math.ceil((high - low) / (nb * width))))
    shift = 0.0
    while True:
        min_shift = float(math.ceil((lo - low) / width)) if low < lo else 0.0
        max_shift = float(math.floor((lo + nb * width * factor - high) / width))
        fits = min_shift == 0.0 and max_shift >= 0.0 if absolute else min_shift <= max_shift
        if fits:
            if not absolute:
                centre = 0.5 * (low + high) - 0.5 * nb * width * factor
                shift = float(math.floor((lo - centre) / width + 0.5))
                shift = min(max(shift, min_shift), max_shift)
            break
        factor = factor + 1.0 if factor < 4.5e15 else factor * 2.0
    target = np.floor((np.arange(counts.size, dtype=np.float64) + shift) / factor)
    target = np.clip(target, 0, counts.size - 1).astype(np.int64)
    merged = np.bincount(target, weights=counts, minlength=counts.size)
    counts[:] = merged.round().astype(np.int64)
    return lo - shift * width, width * factor


def update_histogram_numpy(flat: np.ndarray, shape: tuple[int, int, int],
                           state: tuple[np.ndarray, ...], absolute: bool,
                           saturation: float) -> int:
    """NumPy reference of the native `update_histogram`: shape is (outer, channels, inner),
    state is (counts, lo, width, vmin, vmax, total, saturated), updated in place."""
    counts, lo, width, vmin, vmax, total, saturated = state
    outer, channels, inner = shape
    x = flat.reshape(outer, channels, inner)
    a = np.abs(x)
    bad = int((~(a <= FLOAT32_MAX)).sum())
    if bad:
        return bad
    sat = a >= np.float32(saturation)
    keep = ~sat
    inf = np.float32(np.inf)
    mins = np.where(keep, x, inf).min(axis=(0, 2))
    maxs = np.where(keep, x, -inf).max(axis=(0, 2))
    ok = keep.sum(axis=(0, 2))
    saturated += sat.sum(axis=(0, 2))
    for c in np.flatnonzero(ok):
        mn, mx = float(mins[c]), float(maxs[c])
        bottom = 0.0 if absolute else mn
        top = max(abs(mn), abs(mx)) if absolute else mx
        lo[c], width[c] = _regrid_numpy(counts[c], float(lo[c]), float(width[c]), bottom, top,
                                        absolute=absolute)
        vmin[c] = mn if total[c] == 0 else min(vmin[c], mn)
        vmax[c] = mx if total[c] == 0 else max(vmax[c], mx)
        total[c] += ok[c]
        v = x[:, c, :][keep[:, c, :]].astype(np.float64)
        if absolute:
            v = np.abs(v)
        pos = (v - lo[c]) * (1.0 / width[c])
        idx = np.clip(np.floor(pos), 0, counts.shape[1] - 1).astype(np.int64)
        counts[c] += np.bincount(idx, minlength=counts.shape[1])
    return 0


@dataclass(frozen=True, slots=True)
class Histogram:
    """A histogram at one moment: `channels` rows of `bins` counts, bin j of row c covering
    [lo[c] + j * width[c], lo[c] + (j + 1) * width[c]). `absolute` rows count |x|.

    vmin / vmax are the signed extremes of the binned values; saturated counts the values left
    out. `per_channel` says whether results should stay arrays or become scalars.
    """

    counts: np.ndarray
    lo: np.ndarray
    width: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    saturated: np.ndarray
    absolute: bool
    per_channel: bool
    name: str = "histogram"

    @property
    def bins(self) -> int:
        return self.counts.shape[1]

    @property
    def channels(self) -> int:
        return self.counts.shape[0]

    @property
    def total(self) -> np.ndarray:
        """Binned values per row."""
        return self.counts.sum(axis=1)

    @property
    def edges(self) -> np.ndarray:
        """(channels, bins + 1) bin edges."""
        return self.lo[:, None] + np.arange(self.bins + 1) * self.width[:, None]

    @classmethod
    def from_edges(cls, counts: np.ndarray, edges: np.ndarray, *, vmin: float | None = None,
                   vmax: float | None = None, absolute: bool = False,
                   name: str = "histogram") -> Histogram:
        """Wrap one equal-width histogram given as (counts, edges), e.g. onnxruntime's."""
        counts = np.asarray(counts, dtype=np.int64).reshape(1, -1)
        edges = np.asarray(edges, dtype=np.float64).reshape(-1)
        if edges.size != counts.shape[1] + 1:
            raise LayerwiseError(f"{name}: need bins + 1 edges, got {edges.size} for "
                                 f"{counts.shape[1]} bins")
        width = (edges[-1] - edges[0]) / counts.shape[1]
        if not width > 0:
            raise LayerwiseError(f"{name}: edges must increase, got {edges[0]}..{edges[-1]}")
        lo = 0.0 if absolute else float(edges[0])
        return cls(
            counts=counts,
            lo=np.array([lo]),
            width=np.array([width]),
            vmin=np.array([float(edges[0]) if vmin is None else float(vmin)]),
            vmax=np.array([float(edges[-1]) if vmax is None else float(vmax)]),
            saturated=np.zeros(1, dtype=np.int64),
            absolute=absolute,
            per_channel=False,
            name=name,
        )


class StreamingHistogram:
    """Histogram of |x| (default) or of x (signed=True) with a fixed bin count whose range grows
    to fit each new batch. axis=None gives one histogram per tensor, an int one per channel
    along that axis.

    NaN or Inf input raises (a threshold over them is meaningless) and leaves the state as it
    was; values with |x| >= saturation are counted in `saturated`, not binned.
    """

    def __init__(self, bins: int = 2048, *, signed: bool = False, axis: int | None = None,
                 saturation: float = DEFAULT_SATURATION, name: str = "histogram") -> None:
        if bins < 2:
            raise LayerwiseError(f"{name}: histogram needs at least 2 bins, got {bins}")
        self.bins = int(bins)
        self.absolute = not signed
        self.axis = axis
        self.saturation = saturation_f32(saturation)
        self.name = name
        self._alloc(1 if axis is None else 0)

    def _alloc(self, channels: int) -> None:
        self._counts = np.zeros((channels, self.bins), dtype=np.int64)
        self._lo = np.zeros(channels)
        self._width = np.zeros(channels)
        self._vmin = np.zeros(channels)
        self._vmax = np.zeros(channels)
        self._total = np.zeros(channels, dtype=np.int64)
        self._saturated = np.zeros(channels, dtype=np.int64)

    def update(self, data: np.ndarray) -> None:
        """Add one batch (any shape; the channel axis, if set, must keep its size)."""
        arr = as_array(data, self.name)
        outer, channels, inner = layout(arr.shape, self.axis, self.name)
        if self._counts.shape[0] == 0:
            self._alloc(channels)
        elif channels != self._counts.shape[0]:
            raise LayerwiseError(f"{self.name}: batch has {channels} channels on axis "
                                 f"{self.axis}, earlier batches had {self._counts.shape[0]}")
        flat = as_f32(arr)
        state = (self._counts, self._lo, self._width, self._vmin, self._vmax, self._total,
                 self._saturated)
        if cpp_ext.native is not None:
            bad = cpp_ext.native.update_histogram(flat, outer, channels, inner, *state,
                                                  self.absolute, self.saturation)
        else:
            cpp_ext.warn_if_missing()
            bad = update_histogram_numpy(flat, (outer, channels, inner), state, self.absolute,
                                         self.saturation)
        reject_nonfinite(bad, self.name)

    def _out(self, values: np.ndarray) -> float | np.ndarray:
        return values.copy() if self.axis is not None else values[0].item()

    @property
    def counts(self) -> np.ndarray:
        """(bins,) per tensor or (channels, bins) per channel; a live view."""
        return self._counts if self.axis is not None else self._counts[0]

    @property
    def lo(self) -> float | np.ndarray:
        return self._out(self._lo)

    @property
    def width(self) -> float | np.ndarray:
        return self._out(self._width)

    @property
    def hi(self) -> float | np.ndarray:
        return self._out(self._lo + self.bins * self._width)

    @property
    def total(self) -> int | np.ndarray:
        """Binned values (saturated ones excluded)."""
        return self._out(self._total)

    @property
    def saturated(self) -> int | np.ndarray:
        return self._out(self._saturated)

    @property
    def min(self) -> float | np.ndarray:
        return self._out(self._vmin)

    @property
    def max(self) -> float | np.ndarray:
        return self._out(self._vmax)

    @property
    def edges(self) -> np.ndarray:
        edges = self._lo[:, None] + np.arange(self.bins + 1) * self._width[:, None]
        return edges if self.axis is not None else edges[0]

    def snapshot(self) -> Histogram:
        """A frozen copy for the calibration functions."""
        return Histogram(
            counts=self._counts.copy(),
            lo=self._lo.copy(),
            width=self._width.copy(),
            vmin=self._vmin.copy(),
            vmax=self._vmax.copy(),
            saturated=self._saturated.copy(),
            absolute=self.absolute,
            per_channel=self.axis is not None,
            name=self.name,
        )

    def quantile(self, q: float) -> float | np.ndarray:
        """Upper edge of the bin where the cumulative count reaches fraction q of the values."""
        if not 0.0 <= q <= 1.0:
            raise LayerwiseError(f"{self.name}: quantile needs 0 <= q <= 1, got {q}")
        if (self._total == 0).any():
            raise LayerwiseError(f"{self.name}: histogram is empty")
        cum = np.cumsum(self._counts, axis=1)
        idx = np.array([np.searchsorted(row, q * t, side="left")
                        for row, t in zip(cum, self._total, strict=True)])
        idx = np.minimum(idx, self.bins - 1)
        return self._out(self._lo + (idx + 1) * self._width)
