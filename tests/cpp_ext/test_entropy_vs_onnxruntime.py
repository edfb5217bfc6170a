"""Peer cross-check: our entropy search reproduces onnxruntime's entropy calibrator.

onnxruntime's `HistogramCollector` collects the same tensors (several batches, so its histogram
grows); both searches then run on that histogram and must agree within one of its bins.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwise.cpp_ext import Histogram, StreamingHistogram, entropy_range

calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")

DISTRIBUTIONS = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "laplace": lambda rng, n: rng.laplace(size=n),
    "relu": lambda rng, n: np.maximum(rng.standard_normal(n), 0),
    "gelu_like": lambda rng, n: rng.standard_normal(n) * 0.5 + 1.5,
    "student_t2": lambda rng, n: rng.standard_t(2, n),
    "outliers": lambda rng, n: np.concatenate([rng.standard_normal(n - 5),
                                               [40, -35, 60, 80, -90]]),
    "bimodal": lambda rng, n: np.concatenate([rng.normal(-3, 0.3, n // 2),
                                              rng.normal(2, 0.5, n - n // 2)]),
}


def _onnxruntime(batches: list[np.ndarray], bins: int, levels: int):
    """onnxruntime's thresholds and the histogram it searched."""
    collector = calibrate.HistogramCollector("entropy", True, bins, levels, 99.99, "same")
    with contextlib.redirect_stdout(io.StringIO()):
        for b in batches:
            collector.collect({"t": b})
        lo, hi, *_ = collector.compute_collection_result()["t"]
    return float(lo), float(hi), collector.histogram_dict["t"]


def _check(batches: list[np.ndarray], bins: int, levels: int) -> None:
    lo, hi, (counts, edges, mn, mx, _) = _onnxruntime(batches, bins, levels)
    h = Histogram.from_edges(counts, edges, vmin=float(mn), vmax=float(mx))
    ours = entropy_range(h, levels, flavor="onnxruntime")
    width = float(h.width[0])
    assert abs(ours.lo - lo) <= width and abs(ours.hi - hi) <= width, (ours, lo, hi, width)


@pytest.mark.parametrize(("bins", "levels", "names"), [
    (2048, 128, ["normal", "relu", "student_t2", "outliers", "bimodal"]),
    (2048, 256, ["laplace", "gelu_like", "outliers"]),
    (128, 128, list(DISTRIBUTIONS)),
])
def test_matches_onnxruntime_within_one_bin(bins, levels, names):
    rng = np.random.default_rng(1)
    for name in names:
        batches = [DISTRIBUTIONS[name](rng, 20_000).astype(np.float32) for _ in range(3)]
        _check(batches, bins, levels)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), name=st.sampled_from(sorted(DISTRIBUTIONS)),
       scales=st.lists(st.sampled_from([0.5, 1.0, 3.0]), min_size=1, max_size=3),
       bins=st.sampled_from([256, 512]), levels=st.sampled_from([64, 128]))
def test_matches_onnxruntime_random(seed, name, scales, bins, levels):
    rng = np.random.default_rng(seed)
    batches = [(DISTRIBUTIONS[name](rng, 3000) * s).astype(np.float32) for s in scales]
    _check(batches, bins, levels)


def test_mask_tensor_that_onnxruntime_cannot_take():
    """onnxruntime's collector raises "Too many bins for data range" on additive attention
    masks (values at float32 min); ours counts those values as saturated and calibrates the
    rest."""
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((4, 2, 16, 16)).astype(np.float32)
    scores[..., 12:] += np.finfo(np.float32).min  # masked keys
    h = StreamingHistogram(2048, signed=True)
    h.update(scores)
    assert h.saturated == 4 * 2 * 16 * 4
    r = entropy_range(h, 128, flavor="onnxruntime")
    assert np.isfinite([r.lo, r.hi]).all() and -5.0 < r.lo < 0.0 < r.hi < 5.0
    assert r.saturated == h.saturated
