"""Entropy / percentile / MSE clipping ranges: native == NumPy reference, planted answers, errors.

Tolerances: KL (TensorRT flavour) and MSE curves agree to 1e-9 relative (prefix sums vs direct
sums); the onnxruntime flavour emulates float32, where logf and NumPy's SIMD log differ by an
ulp, so 2e-5 relative. Searches must pick windows whose reference objective ties the
reference's minimum to 1e-9 (distinct windows can tie exactly, e.g. on constant tensors).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwise import cpp_ext
from layerwise.base.errors import LayerwiseError
from layerwise.cpp_ext import (
    Histogram,
    StreamingHistogram,
    entropy_range,
    kl_divergence,
    mse_range,
    percentile_range,
    quantization_mse,
)
from layerwise.cpp_ext import calibrate as cal

needs_native = pytest.mark.skipif(cpp_ext.native is None, reason="native kernels not built")


def _counts(draw_seed: int, bins: int, sparsity: float) -> np.ndarray:
    rng = np.random.default_rng(draw_seed)
    c = rng.geometric(0.02, bins) * (rng.random(bins) > sparsity)
    c[rng.integers(bins)] += 1  # never all zero
    return c.astype(np.int64)


def _random_windows(seed: int, bins: int, min_width: int, n: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    s = rng.integers(0, bins - min_width + 1, n)
    e = np.array([rng.integers(a + min_width, bins + 1) for a in s])
    return s, e


def _close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> None:
    assert np.array_equal(np.isinf(a), np.isinf(b))
    fin = np.isfinite(b)
    np.testing.assert_allclose(a[fin], b[fin], rtol=rtol, atol=atol)


@needs_native
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), bins=st.integers(8, 300), levels=st.sampled_from([2, 4, 8]),
       sparsity=st.sampled_from([0.0, 0.5, 0.95]), flavor=st.sampled_from(["tensorrt",
                                                                            "onnxruntime"]))
def test_kl_native_equals_reference(*, seed, bins, levels, sparsity, flavor):
    counts = np.stack([_counts(seed, bins, sparsity), _counts(seed + 1, bins, sparsity)])
    s, e = _random_windows(seed, bins, levels, 25)
    got = kl_divergence(counts, s, e, levels, flavor)
    want = cal.kl_divergence_numpy(counts, s, e, levels, flavor)
    if flavor == "tensorrt":
        _close(got, want, 1e-9, 1e-12)
    else:
        _close(got, want, 2e-5, 1e-7)


@needs_native
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), bins=st.integers(2, 300), levels=st.sampled_from([2, 16, 256]),
       sparsity=st.sampled_from([0.0, 0.9]))
def test_mse_native_equals_reference(seed, bins, levels, sparsity):
    counts = np.stack([_counts(seed, bins, sparsity), _counts(seed + 7, bins, sparsity)])
    s, e = _random_windows(seed, bins, 1, 25)
    _close(quantization_mse(counts, s, e, levels),
           cal.quantization_mse_numpy(counts, s, e, levels), 1e-9, 1e-12)


def _histogram(seed: int, signed: bool, axis: int | None, kind: str, bins: int) -> Histogram:
    rng = np.random.default_rng(seed)
    x = {
        "normal": lambda: rng.standard_normal((64, 3, 40)),
        "heavy": lambda: rng.standard_t(2, (64, 3, 40)),
        "relu": lambda: np.maximum(rng.standard_normal((64, 3, 40)), 0) + 0.5,
        "constant": lambda: np.full((64, 3, 40), -2.5),
        "one": lambda: np.full((1, 3, 1), 4.0),
    }[kind]()
    h = StreamingHistogram(bins, signed=signed, axis=axis)
    h.update(x)
    h.update(x[: max(1, len(x) // 2)] * 1.7)
    return h.snapshot()


def _objective_ties(h: Histogram, native_win, ref_win, objective) -> None:
    for c in range(h.channels):
        picked = objective(h.counts[c][None], native_win[0][c:c + 1], native_win[1][c:c + 1])
        best = objective(h.counts[c][None], ref_win[0][c:c + 1], ref_win[1][c:c + 1])
        assert picked[0, 0] <= best[0, 0] + 1e-9 * abs(best[0, 0]) + 1e-12


@needs_native
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), signed=st.booleans(), axis=st.sampled_from([None, 1]),
       kind=st.sampled_from(["normal", "heavy", "relu", "constant", "one"]),
       symmetric=st.booleans(), levels=st.sampled_from([8, 32]))
def test_searches_native_equal_reference(*, seed, signed, axis, kind, symmetric, levels):
    h = _histogram(seed, signed, axis, kind, 128)
    symmetric = symmetric or not signed
    for native_obj, ref_obj, min_width in [
        (lambda c, s, e: kl_divergence(c, s, e, levels),
         lambda c, s, e: cal.kl_divergence_numpy(c, s, e, levels), levels),
        (lambda c, s, e: quantization_mse(c, s, e, levels),
         lambda c, s, e: cal.quantization_mse_numpy(c, s, e, levels), 1),
    ]:
        sym = symmetric if min_width > 1 else not signed
        got = cal.search_windows(h, levels, sym, min_width, native_obj)
        want = cal.search_windows(h, levels, sym, min_width, ref_obj)
        _objective_ties(h, got, want, ref_obj)
    got, want = percentile_range(h, 99.0), cal.percentile_range_numpy(h, 99.0)
    np.testing.assert_array_equal([got.lo, got.hi], [want.lo, want.hi])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("method", [entropy_range, mse_range, percentile_range])
def test_ranges_are_finite_and_inside_the_data(signed, method):
    for kind in ["normal", "heavy", "relu", "constant", "one"]:
        h = _histogram(3, signed, None, kind, 256)
        kw = {"symmetric": False} if method is entropy_range and signed else {}
        r = method(h, **kw)
        assert np.isfinite([r.lo, r.hi]).all() and r.lo <= r.hi
        assert r.lo >= h.vmin[0] - 1e-12 if signed else r.hi <= np.abs([h.vmin, h.vmax]).max()
        assert r.hi <= h.vmax[0] + 1e-12 if signed else r.lo == -r.hi


def test_planted_outliers_are_clipped():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(200_000), [60.0, -80.0, 95.0]]).astype(np.float32)
    h = StreamingHistogram(2048)
    h.update(x)
    for r in (entropy_range(h), percentile_range(h, 99.9)):
        assert 2.5 < r.hi < 10.0, r
    # Squared error weighs three far outliers against 200k rounding errors: it clips less.
    assert 10.0 < mse_range(h).hi < 95.0
    assert percentile_range(h, 100.0).hi == pytest.approx(95.0)
    signed = StreamingHistogram(2048, signed=True)
    signed.update(np.maximum(x, 0))  # a ReLU output: the uint8 range starts at 0
    r = entropy_range(signed, symmetric=False)  # no window is narrower than 256 bins (11.9)
    assert r.lo == 0.0 and 2.5 < r.hi < 12.0, r
    r = mse_range(signed)
    assert r.lo == 0.0 and 10.0 < r.hi < 95.0, r
    uniform = StreamingHistogram(2048)
    uniform.update(np.linspace(-1.0, 1.0, 100_001))
    assert mse_range(uniform).hi == pytest.approx(1.0, abs=5e-3)  # nothing worth clipping


def test_per_channel_equals_each_channel_alone():
    rng = np.random.default_rng(2)
    x = rng.laplace(size=(500, 3)) * np.array([1.0, 20.0, 0.2])
    per_channel = StreamingHistogram(512, axis=1)
    per_channel.update(x)
    for method in (entropy_range, mse_range, percentile_range):
        r = method(per_channel)
        assert r.hi.shape == (3,)
        for c in range(3):
            alone = StreamingHistogram(512)
            alone.update(x[:, c])
            assert method(alone).hi == pytest.approx(r.hi[c])


def test_saturated_mask_gives_a_stated_range_not_nan():
    mask = np.zeros((4, 1, 8, 8), dtype=np.float32)
    mask[..., 5:] = np.finfo(np.float32).min
    h = StreamingHistogram(2048)
    h.update(mask)
    r = entropy_range(h)
    assert (r.lo, r.hi, r.saturated) == (0.0, 0.0, 4 * 8 * 3)
    all_masked = StreamingHistogram(2048, name="encoder.mask")
    all_masked.update(np.full(10, np.finfo(np.float32).min))
    with pytest.raises(LayerwiseError, match=r"encoder.mask.*no binned values.*saturated: 10"):
        entropy_range(all_masked)


def test_clear_errors():
    h = StreamingHistogram(64)
    h.update(np.arange(10.0))
    with pytest.raises(LayerwiseError, match="only gives symmetric"):
        entropy_range(h, symmetric=False)
    with pytest.raises(LayerwiseError, match=r"128 levels need .* at least 128 bins"):
        entropy_range(h, 128)
    with pytest.raises(LayerwiseError, match="unknown KL flavor 'mxnet'"):
        entropy_range(h, 8, flavor="mxnet")
    with pytest.raises(LayerwiseError, match="percentile must be"):
        percentile_range(h, 0.0)
    with pytest.raises(LayerwiseError, match="edges must increase"):
        Histogram.from_edges([1, 2], [1.0, 1.0, 1.0])
    counts = np.arange(16)
    with pytest.raises(LayerwiseError, match=r"window \[0, 3\) does not fit 16 bins"):
        kl_divergence(counts, [0], [3], 8)
    with pytest.raises(LayerwiseError, match=r"window \[4, 17\)"):
        quantization_mse(counts, [4], [17], 8)
    with pytest.raises(LayerwiseError, match="unknown KL flavor"):
        kl_divergence(counts, [0], [16], 8, flavor="scipy")
    with pytest.raises(LayerwiseError, match="at least 2 levels"):
        quantization_mse(counts, [0], [16], 1)


def test_asymmetric_entropy_stays_off_empty_tails():
    """A ReLU6 output (22% exact zeros) in a histogram whose range grew below 0: the window
    must cover the data, not an empty tail plus the zero spike."""
    from layerwise.cpp_ext import Histogram, entropy_range

    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(0.5, 0.8, 200_000), 0, 2.5)
    edges = np.linspace(-1.1, 3.16, 2049)
    counts, _ = np.histogram(x, edges)
    h = Histogram.from_edges(counts, edges, vmin=0.0, vmax=float(x.max()))
    r = entropy_range(h, symmetric=False)
    assert r.lo == 0.0 and r.hi > 1.5
