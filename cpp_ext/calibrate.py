"""Clipping ranges from histograms: entropy (KL) search, percentile, MSE-optimal.

Every search evaluates an objective over candidate windows [start, stop) of bins, values outside
a window being clipped into its end bins, and keeps the first window of least objective:

- |x| histograms (`absolute`): windows [0, stop), the int8-symmetric case; range (-t, t).
- signed histograms, symmetric: windows centred on the edge nearest zero, onnxruntime's layout.
- signed histograms, asymmetric (uint8): windows holding the edge nearest zero, first on a
  coarse grid (step bins // 64), then around the best one with steps divided by 4 down to one
  bin, 4 steps either side.

Thresholds never reach past the observed values: they are clipped to [min, max] (or max |x|).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from layerwise import cpp_ext
from layerwise.base.errors import LayerwiseError
from layerwise.cpp_ext.histogram import Histogram, StreamingHistogram

KL_EPS = 1e-4
FLAVORS = {"tensorrt": 0, "onnxruntime": 1}
GRID_STEPS = 64  # coarse grid of the asymmetric search: bins // GRID_STEPS per step
REFINE = 4  # each refinement divides the step by REFINE and looks REFINE steps either side

Objective = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class ClipRange:
    """A clipping range per tensor (floats) or per channel (arrays), with its provenance."""

    lo: float | np.ndarray
    hi: float | np.ndarray
    method: str
    saturated: int | np.ndarray


# ---------------------------------------------------------------------------------- objectives


def _windows(counts: np.ndarray, starts: np.ndarray, stops: np.ndarray, levels: int,
             min_width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous int64 (counts (rows, bins), starts, stops); raises on windows that do not fit."""
    counts = np.ascontiguousarray(np.atleast_2d(counts), dtype=np.int64)
    starts = np.ascontiguousarray(starts, dtype=np.int64).reshape(-1)
    stops = np.ascontiguousarray(stops, dtype=np.int64).reshape(-1)
    if levels < 2:
        raise LayerwiseError(f"quantization needs at least 2 levels, got {levels}")
    if starts.size != stops.size:
        raise LayerwiseError(f"{starts.size} window starts for {stops.size} stops")
    bad = (starts < 0) | (stops > counts.shape[1]) | (stops - starts < min_width)
    if bad.any():
        k = int(np.argmax(bad))
        raise LayerwiseError(f"window [{starts[k]}, {stops[k]}) does not fit {counts.shape[1]} "
                             f"bins with at least {min_width} bins per window")
    return counts, starts, stops


def kl_divergence(counts: np.ndarray, starts: np.ndarray, stops: np.ndarray, levels: int,
                  flavor: str = "tensorrt") -> np.ndarray:
    """KL(p || q) per (row, window) of int64 counts (rows, bins): p is the clipped histogram,
    q its `levels`-level quantization. See `KlFlavor` in calibrate.h for the two flavours."""
    if flavor not in FLAVORS:
        raise LayerwiseError(f"unknown KL flavor {flavor!r}; valid: {sorted(FLAVORS)}")
    counts, starts, stops = _windows(counts, starts, stops, levels, levels)
    if cpp_ext.native is None:
        cpp_ext.warn_if_missing()
        return kl_divergence_numpy(counts, starts, stops, levels, flavor)
    out = np.empty((counts.shape[0], starts.size))
    cpp_ext.native.kl_windows(counts, starts, stops, levels, FLAVORS[flavor], out)
    return out


def _kl_tensorrt_row(c: np.ndarray, s: int, e: int, levels: int) -> float:
    total = c.sum()
    if total <= 0:
        return np.nan
    if c[s:e].sum() <= 0:
        return np.inf
    p = c[s:e].copy()
    p[0] += c[:s].sum()
    p[-1] += c[e:].sum()
    m = (e - s) // levels
    level = np.minimum(np.arange(e - s) // m, levels - 1)
    q_level = np.bincount(level, weights=c[s:e], minlength=levels)
    nz = np.bincount(level, weights=(p > 0), minlength=levels)
    used = nz > 0
    q_bin = np.where(q_level > 0, q_level / np.maximum(nz, 1), KL_EPS)
    q_total = np.where(q_level > 0, q_level, KL_EPS * nz)[used].sum()
    mask = p > 0
    pn = p[mask] / total
    qn = q_bin[level][mask] / q_total
    return float(np.sum(pn * np.log(pn / qn)))


def _smooth_f32(v: np.ndarray) -> np.ndarray | None:
    """onnxruntime's `smooth_distribution`, in its float32 arithmetic."""
    is_zeros = (v == 0).astype(np.float32)
    is_nonzeros = (v != 0).astype(np.float32)
    zeros = float(is_zeros.sum())
    nonzeros = v.size - zeros
    if not nonzeros:
        return None
    eps1 = KL_EPS * zeros / nonzeros
    out = v.astype(np.float32)
    out += np.float32(KL_EPS) * is_zeros + np.float32(-eps1) * is_nonzeros
    return out


def _kl_onnxruntime_row(c: np.ndarray, s: int, e: int, levels: int) -> float:
    c = c.astype(np.int64)
    if c.sum() <= 0:
        return np.nan
    p = c[s:e].copy()
    p[0] += c[:s].sum()
    p[-1] += c[e:].sum()
    m = (e - s) // levels
    q = np.zeros(e - s, dtype=np.int64)
    for k in range(levels):
        a, b = k * m, (k + 1) * m
        level = c[s + a : s + b].sum() + (c[s + levels * m : e].sum() if k == levels - 1 else 0)
        norm = int((p[a:b] != 0).sum())
        if norm:
            q[a:b] = level / norm  # truncated by the int64 store, as onnxruntime does
    ps, qs = _smooth_f32(p), _smooth_f32(q)
    if ps is None or qs is None:
        return np.inf
    pn, qn = ps / ps.sum(), qs / qs.sum()
    return float(np.sum(pn * np.log(pn / qn)))


def kl_divergence_numpy(counts: np.ndarray, starts: np.ndarray, stops: np.ndarray, levels: int,
                        flavor: str = "tensorrt") -> np.ndarray:
    """NumPy reference of `kl_divergence`: each window evaluated directly, bin by bin."""
    row_kl = _kl_tensorrt_row if flavor == "tensorrt" else _kl_onnxruntime_row
    counts = np.atleast_2d(counts).astype(np.float64 if flavor == "tensorrt" else np.int64)
    return np.array([[row_kl(row, int(s), int(e), levels) for s, e in zip(starts, stops,
                                                                         strict=True)]
                     for row in counts])


def quantization_mse(counts: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                     levels: int) -> np.ndarray:
    """Mean squared error (bin widths squared) per (row, window) of representing each bin by its
    centre quantized to `levels` uniform levels over the window's edges (round half up)."""
    counts, starts, stops = _windows(counts, starts, stops, levels, 1)
    if cpp_ext.native is None:
        cpp_ext.warn_if_missing()
        return quantization_mse_numpy(counts, starts, stops, levels)
    out = np.empty((counts.shape[0], starts.size))
    cpp_ext.native.mse_windows(counts, starts, stops, levels, out)
    return out


def quantization_mse_numpy(counts: np.ndarray, starts: np.ndarray, stops: np.ndarray,
                           levels: int) -> np.ndarray:
    """NumPy reference of `quantization_mse`."""
    counts = np.atleast_2d(counts).astype(np.float64)
    centre = np.arange(counts.shape[1]) + 0.5
    top = float(levels - 1)
    a = np.asarray(starts, dtype=np.float64)[:, None]
    step = (np.asarray(stops, dtype=np.float64)[:, None] - a) / top
    k = np.floor(np.clip((centre - a) / step, 0.0, top) + 0.5)
    sq = (centre - (a + k * step)) ** 2  # (windows, bins)
    total = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ sq.T) / total


# ---------------------------------------------------------------------------------- windows


def magnitude_windows(bins: int, min_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows [0, stop) for stop = min_width .. bins."""
    stops = np.arange(min_width, bins + 1, dtype=np.int64)
    return np.zeros_like(stops), stops


def centred_windows(bins: int, levels: int, zero: int) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's windows [zero - i, zero + i + 1) for i = levels // 2 .., clipped to the
    histogram; windows narrower than `levels` and repeats are dropped."""
    i = np.arange(levels // 2, max(zero, bins - 1 - zero) + 1, dtype=np.int64)
    starts = np.maximum(zero - i, 0)
    stops = np.minimum(zero + i + 1, bins)
    keep = stops - starts >= levels
    keep[1:] &= (starts[1:] != starts[:-1]) | (stops[1:] != stops[:-1])
    return starts[keep], stops[keep]


def _keep(s: np.ndarray, e: np.ndarray, min_width: int,
          zero: int) -> tuple[np.ndarray, np.ndarray]:
    s, e = np.meshgrid(s, e, indexing="ij")
    keep = (e - s >= min_width) & (s <= zero) & (e >= zero)
    return s[keep], e[keep]


def grid_windows(bins: int, min_width: int, step: int,
                 zero: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows whose ends lie on multiples of `step` (or the last edge) and that hold edge
    `zero`: uint8 ranges must represent 0, and this keeps windows off empty tails, where
    clipping everything into one end bin would score a spurious KL of 0."""
    ends = np.unique(np.append(np.arange(0, bins + 1, step), [bins, zero])).astype(np.int64)
    return _keep(ends, ends, min_width, zero)


def local_windows(bins: int, min_width: int, start: int, stop: int, step: int, *,
                  zero: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows holding edge `zero` with ends at start + k * step and stop + k * step,
    |k| <= REFINE."""
    k = np.arange(-REFINE, REFINE + 1, dtype=np.int64) * step
    s, e = start + k, stop + k
    return _keep(s[(s >= 0) & (s <= bins)], e[(e >= 0) & (e <= bins)], min_width, zero)


def zero_edge(hist: Histogram, row: int, top: int) -> int:
    """Index of the bin edge nearest zero, within [0, top]."""
    z = int(np.rint(-hist.lo[row] / hist.width[row]))
    return min(max(z, 0), top)


# ---------------------------------------------------------------------------------- searches


def _as_histogram(hist: Histogram | StreamingHistogram) -> Histogram:
    h = hist.snapshot() if isinstance(hist, StreamingHistogram) else hist
    empty = np.flatnonzero(h.total == 0)
    if empty.size:
        which = "it" if not h.per_channel else f"channels {empty[:8].tolist()}"
        raise LayerwiseError(
            f"{h.name}: {which} holds no binned values (saturated: {h.saturated.sum()}); "
            "add batches with finite values below the saturation bound first")
    return h


def _check_kind(h: Histogram, symmetric: bool) -> None:
    if h.absolute and not symmetric:
        raise LayerwiseError(f"{h.name}: an |x| histogram only gives symmetric ranges; "
                             "collect it with signed=True for an asymmetric one")


def _check_levels(h: Histogram, levels: int, min_width: int) -> None:
    if levels < 2 or h.bins < min_width:
        raise LayerwiseError(f"{h.name}: {levels} levels need a histogram of at least "
                             f"{min_width} bins, got {h.bins}")


def _occupied(s: np.ndarray, e: np.ndarray, row: np.ndarray,
              zero: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows that stay inside the occupied bins (and edge `zero`): a window reaching into
    an empty tail spends levels on nothing yet can score a lower KL (a ReLU6 output with a
    spike at 0, in a histogram grown below 0, would clip to a sliver above 0)."""
    nz = np.flatnonzero(row)
    first, last = min(int(nz[0]), zero), max(int(nz[-1]) + 1, zero)
    keep = (s >= first) & (e <= last)
    return (s[keep], e[keep]) if keep.any() else (s, e)


def _best_asymmetric(row: np.ndarray, min_width: int, zero: int,
                     objective: Objective) -> tuple[int, int]:
    bins = row.size
    step = max(1, bins // GRID_STEPS)
    s, e = _occupied(*grid_windows(bins, min_width, step, zero), row, zero)
    k = int(np.argmin(objective(row[None], s, e)[0]))
    best = int(s[k]), int(e[k])
    while step > 1:
        step = max(1, step // REFINE)
        s, e = _occupied(*local_windows(bins, min_width, *best, step, zero=zero), row, zero)
        k = int(np.argmin(objective(row[None], s, e)[0]))
        best = int(s[k]), int(e[k])
    return best


def _range(h: Histogram, starts: np.ndarray, stops: np.ndarray, method: str) -> ClipRange:
    lo_edge = h.lo + starts * h.width
    hi_edge = h.lo + stops * h.width
    if h.absolute:
        amax = np.maximum(np.abs(h.vmin), np.abs(h.vmax))
        hi = np.minimum(hi_edge, amax)
        lo = 0.0 - hi
    else:
        lo = np.maximum(lo_edge, h.vmin)
        hi = np.minimum(hi_edge, h.vmax)
    if h.per_channel:
        return ClipRange(lo=lo, hi=hi, method=method, saturated=h.saturated.copy())
    return ClipRange(lo=float(lo[0]), hi=float(hi[0]), method=method,
                     saturated=int(h.saturated[0]))


def search_windows(h: Histogram, levels: int, symmetric: bool, min_width: int,
                   objective: Objective) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first window of least `objective` among the candidates for this histogram
    kind (see the module docstring); returns (starts, stops), one entry per row."""
    _check_kind(h, symmetric)
    if h.absolute:
        s, e = magnitude_windows(h.bins, min_width)
        k = np.argmin(objective(h.counts, s, e), axis=1)
        return s[k], e[k]
    best = np.zeros((2, h.channels), dtype=np.int64)
    for c in range(h.channels):
        if symmetric:
            s, e = centred_windows(h.bins, levels, zero_edge(h, c, h.bins - 1))
            if s.size == 0:
                raise LayerwiseError(f"{h.name}: no centred window of {levels} bins fits; "
                                     "use symmetric=False or more bins")
            k = int(np.argmin(objective(h.counts[c][None], s, e)[0]))
            best[:, c] = s[k], e[k]
        else:
            best[:, c] = _best_asymmetric(h.counts[c], min_width, zero_edge(h, c, h.bins),
                                          objective)
    return best[0], best[1]


def _entropy(hist: Histogram | StreamingHistogram, levels: int | None, symmetric: bool,
             flavor: str, kl: Callable[..., np.ndarray]) -> ClipRange:
    h = _as_histogram(hist)
    if flavor not in FLAVORS:
        raise LayerwiseError(f"{h.name}: unknown KL flavor {flavor!r}; valid: {sorted(FLAVORS)}")
    _check_kind(h, symmetric)
    levels = levels or (128 if symmetric else 256)
    _check_levels(h, levels, levels)
    s, e = search_windows(h, levels, symmetric, levels, lambda c, s, e: kl(c, s, e, levels, flavor))
    return _range(h, s, e, f"entropy/{flavor}/{levels}")


def entropy_range(hist: Histogram | StreamingHistogram, levels: int | None = None, *,
                  symmetric: bool = True, flavor: str = "tensorrt") -> ClipRange:
    """Clipping range of least KL divergence between the histogram and its quantization.

    levels defaults to 128 when symmetric (int8: 128 magnitudes) and 256 otherwise (uint8).
    flavor="onnxruntime" reproduces onnxruntime 1.32's objective on its centred windows.
    """
    return _entropy(hist, levels, symmetric, flavor, kl_divergence)


def entropy_range_numpy(hist: Histogram | StreamingHistogram, levels: int | None = None, *,
                        symmetric: bool = True, flavor: str = "tensorrt") -> ClipRange:
    """NumPy reference of `entropy_range`."""
    return _entropy(hist, levels, symmetric, flavor, kl_divergence_numpy)


def _mse(hist: Histogram | StreamingHistogram, levels: int | None,
         mse: Callable[..., np.ndarray]) -> ClipRange:
    h = _as_histogram(hist)
    levels = levels or (128 if h.absolute else 256)
    if levels > 2**30:
        raise LayerwiseError(f"{h.name}: at most 2**30 levels, got {levels}")
    _check_levels(h, levels, 1)
    s, e = search_windows(h, levels, h.absolute, 1, lambda c, s, e: mse(c, s, e, levels))
    return _range(h, s, e, f"mse/{levels}")


def mse_range(hist: Histogram | StreamingHistogram, levels: int | None = None) -> ClipRange:
    """Clipping range of least quantization MSE (bins represented by their centres).

    |x| histograms give a symmetric range with `levels` magnitudes (default 128, int8); signed
    histograms an asymmetric one with `levels` steps (default 256, uint8).
    """
    return _mse(hist, levels, quantization_mse)


def mse_range_numpy(hist: Histogram | StreamingHistogram, levels: int | None = None) -> ClipRange:
    """NumPy reference of `mse_range`."""
    return _mse(hist, levels, quantization_mse_numpy)


def _cumulative_numpy(counts: np.ndarray, target: np.ndarray, strict: bool) -> np.ndarray:
    cum = np.cumsum(counts, axis=1).astype(np.float64)
    hit = cum > target[:, None] if strict else cum >= target[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), counts.shape[1] - 1)


def _percentile(hist: Histogram | StreamingHistogram, percentile: float,
                search: Callable[[np.ndarray, np.ndarray, bool], np.ndarray]) -> ClipRange:
    h = _as_histogram(hist)
    if not 0.0 < percentile <= 100.0:
        raise LayerwiseError(f"{h.name}: percentile must be in (0, 100], got {percentile}")
    total = h.total.astype(np.float64)
    method = f"percentile/{percentile}"
    if h.absolute:
        hi = search(h.counts, percentile / 100.0 * total, False) + 1
        return _range(h, np.zeros_like(hi), hi, method)
    cut = (100.0 - percentile) / 200.0
    lo = search(h.counts, cut * total, True)
    hi = search(h.counts, (1.0 - cut) * total, False) + 1
    return _range(h, lo, hi, method)


def _cumulative_native(counts: np.ndarray, target: np.ndarray, strict: bool) -> np.ndarray:
    if cpp_ext.native is None:
        cpp_ext.warn_if_missing()
        return _cumulative_numpy(counts, target, strict)
    out = np.empty(counts.shape[0], dtype=np.int64)
    cpp_ext.native.cumulative_search(np.ascontiguousarray(counts), target, strict, out)
    return out


def percentile_range(hist: Histogram | StreamingHistogram, percentile: float = 99.99) -> ClipRange:
    """Range holding `percentile` % of the values: of |x| for |x| histograms, else cutting
    (100 - percentile) / 2 % off each side. Ends are bin edges (the covering side)."""
    return _percentile(hist, percentile, _cumulative_native)


def percentile_range_numpy(hist: Histogram | StreamingHistogram,
                           percentile: float = 99.99) -> ClipRange:
    """NumPy reference of `percentile_range`."""
    return _percentile(hist, percentile, _cumulative_numpy)


HISTOGRAM_METHODS = ("minmax", "percentile", "entropy", "mse")


def clip_range(hist: Histogram | StreamingHistogram, method: str, percentile: float = 99.99,
               symmetric: bool = False) -> tuple[float, float]:
    """One tensor's (lo, hi) clipping range from its histogram by a calibration method of
    HISTOGRAM_METHODS (per-channel results collapse to their widest); `symmetric`: +-max."""
    if method == "minmax":
        lo, hi = float(hist.min), float(hist.max)
    else:
        if method == "percentile":
            r = percentile_range(hist, percentile)
        elif method == "entropy":
            r = entropy_range(hist, symmetric=symmetric)
        elif method == "mse":
            r = mse_range(hist)
        else:
            raise ValueError(f"unknown histogram calibration method {method!r}; use one of "
                             f"{', '.join(HISTOGRAM_METHODS)}")
        lo, hi = float(np.min(r.lo)), float(np.max(r.hi))
    if symmetric:
        m = max(abs(lo), abs(hi))
        return -m, m
    return lo, hi
