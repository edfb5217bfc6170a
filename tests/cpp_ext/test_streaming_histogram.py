"""Streaming histograms: native kernel == NumPy reference (exactly), range growth, edge cases.

Tolerance: counts, ranges and extremes are compared for exact equality; both sides do the same
IEEE double operations in the same order.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from layerwise import cpp_ext
from layerwise.base.errors import LayerwiseError
from layerwise.cpp_ext import StreamingHistogram, scan_range
from layerwise.cpp_ext.histogram import scan_range_numpy, update_histogram_numpy
from layerwise.cpp_ext.inputs import saturation_f32

needs_native = pytest.mark.skipif(cpp_ext.native is None, reason="native kernels not built")
F32_MIN = float(np.finfo(np.float32).min)


def _state(channels: int, bins: int) -> tuple[np.ndarray, ...]:
    return (np.zeros((channels, bins), np.int64), np.zeros(channels), np.zeros(channels),
            np.zeros(channels), np.zeros(channels), np.zeros(channels, np.int64),
            np.zeros(channels, np.int64))


def _both(batches: list[np.ndarray], shape: tuple[int, int, int] | None, bins: int,
          absolute: bool, saturation: float = 1e30) -> tuple[np.ndarray, ...]:
    """Feed the batches to the native kernel and the reference; assert identical states.
    shape None means per tensor, whatever each batch's size."""
    sat = saturation_f32(saturation)
    channels = 1 if shape is None else shape[1]
    native, ref = _state(channels, bins), _state(channels, bins)
    for x in batches:
        flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        layout = (1, 1, flat.size) if shape is None else shape
        got = cpp_ext.native.update_histogram(flat, *layout, *native, absolute, sat)
        want = update_histogram_numpy(flat, layout, ref, absolute, sat)
        assert got == want
    for a, b in zip(native, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    return native


values = st.floats(-2.0**106, 2.0**106, width=32, allow_nan=False, allow_infinity=False)


@needs_native
@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6)),
    scales=st.lists(st.sampled_from([1e-3, 1.0, 7.0, 1e3, 1e6]), min_size=1, max_size=4),
    bins=st.sampled_from([2, 7, 64, 2048]),
    absolute=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    offset=st.sampled_from([0.0, 5.0, -300.0]),
)
def test_native_equals_reference_random(*, shape, scales, bins, absolute, seed, offset):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    batches = [(rng.standard_normal(n) * s + offset).astype(np.float32) for s in scales]
    state = _both(batches, shape, bins, absolute)
    # Nothing is lost: every value is binned exactly once in its channel.
    np.testing.assert_array_equal(state[0].sum(axis=1), state[5])
    assert state[5].sum() == n * len(scales)


@needs_native
@settings(max_examples=60, deadline=None)
@given(data=hnp.arrays(np.float32, st.integers(1, 40), elements=values),
       more=hnp.arrays(np.float32, st.integers(1, 40), elements=values),
       absolute=st.booleans())
def test_native_equals_reference_edge_values(data, more, absolute):
    """Values from hypothesis: zeros, subnormals, repeated values, saturated (>= 1e30) ones."""
    state = _both([data, more], None, 16, absolute)
    both = np.concatenate([data, more])
    unsaturated = int((np.abs(both) < np.float32(1e30)).sum())
    assert state[5][0] == unsaturated
    assert state[6][0] == both.size - unsaturated


@needs_native
@pytest.mark.parametrize("absolute", [True, False])
def test_range_grows_1000x_without_losing_or_smearing(absolute):
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(5000).astype(np.float32) * s for s in (1, 10, 100, 1000)]
    h = StreamingHistogram(256, signed=not absolute)
    for b in batches:
        h.update(b)
    everything = np.concatenate(batches).astype(np.float64)
    v = np.abs(everything) if absolute else everything
    assert h.total == v.size
    assert h.lo <= v.min() and h.hi >= v.max()
    # Each value sits in the bin of the final grid that holds it, except within rounding of
    # an edge (an old bin always lies inside one new bin).
    pos = (v - h.lo) / h.width
    direct = np.bincount(np.clip(np.floor(pos), 0, 255).astype(np.int64), minlength=256)
    near_edge = np.abs(pos - np.rint(pos)) < 1e-6
    assert np.abs(direct - h.counts).sum() <= 2 * near_edge.sum()


@needs_native
def test_per_channel_rows_equal_per_tensor_histograms():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4, 9)).astype(np.float32) * np.array([1, 10, 0.1, 5])[:, None]
    per_channel = StreamingHistogram(128, axis=1, signed=True)
    per_channel.update(x)
    per_channel.update(2 * x)
    for c in range(4):
        single = StreamingHistogram(128, signed=True)
        single.update(x[:, c])
        single.update(2 * x[:, c])
        np.testing.assert_array_equal(per_channel.counts[c], single.counts)
        assert per_channel.lo[c] == single.lo and per_channel.width[c] == single.width


def test_one_value_and_constant_tensors():
    h = StreamingHistogram(8)
    h.update(np.array([3.0]))
    assert (h.total, h.lo, h.max) == (1, 0.0, 3.0)
    assert h.hi >= 3.0 and h.counts[-1] == 1
    assert h.quantile(1.0) == pytest.approx(3.0)
    zeros = StreamingHistogram(8)
    zeros.update(np.zeros((4, 4)))
    assert zeros.total == 16 and zeros.counts[0] == 16 and zeros.hi == 1.0
    five = StreamingHistogram(8, signed=True)
    five.update(np.full(10, 5.0))
    five.update(np.full(3, 4.0))  # grows downwards by whole bins
    assert five.total == 13 and five.min == 4.0 and five.max == 5.0
    assert five.lo <= 4.0 and five.hi >= 5.0


def test_huge_ranges_and_saturation():
    h = StreamingHistogram(2048, signed=True)
    h.update(np.array([1e-30, -1e29, 1e29, 3e38, F32_MIN], dtype=np.float32))
    assert h.total == 3 and h.saturated == 2
    assert h.min == pytest.approx(-1e29, rel=1e-6) and h.max == pytest.approx(1e29, rel=1e-6)
    assert np.isfinite(h.edges).all()
    off = StreamingHistogram(16, saturation=np.inf)  # no saturation: 3.4e38 is binned
    off.update(np.array([1.0, F32_MIN], dtype=np.float32))
    assert off.total == 2 and off.saturated == 0 and np.isfinite(off.hi)


def test_mask_tensor_counts_saturated_values():
    """An additive attention mask: 0 where attended, float32 min where masked."""
    mask = np.zeros((8, 1, 12, 12), dtype=np.float32)
    mask[..., 9:] = F32_MIN
    h = StreamingHistogram(2048)
    h.update(mask)
    assert h.saturated == 8 * 12 * 3 and h.total == 8 * 12 * 9
    assert np.isfinite(h.hi)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_rejected_and_state_untouched(bad):
    h = StreamingHistogram(32, axis=0)
    h.update(np.ones((2, 5)))
    before = h.counts.copy(), h.lo.copy(), h.width.copy(), h.total.copy()
    x = np.ones((2, 5))
    x[1, 3] = bad
    with pytest.raises(LayerwiseError, match="1 NaN/Inf"):
        h.update(x)
    after = h.counts, h.lo, h.width, h.total
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_clear_errors():
    with pytest.raises(LayerwiseError, match="empty"):
        StreamingHistogram().update(np.array([], dtype=np.float32))
    with pytest.raises(LayerwiseError, match="at least 2 bins"):
        StreamingHistogram(1)
    h = StreamingHistogram(axis=-1, name="layer.3")
    h.update(np.ones((2, 3)))
    with pytest.raises(LayerwiseError, match=r"layer\.3.*4 channels"):
        h.update(np.ones((2, 4)))
    with pytest.raises(LayerwiseError, match="axis 2 is out of range"):
        StreamingHistogram(axis=2).update(np.ones((2, 3)))
    with pytest.raises(LayerwiseError, match="empty"):
        StreamingHistogram().quantile(0.5)


def test_legacy_api_and_dtype_conversion():
    h = StreamingHistogram(64)
    h.update(np.arange(-10, 11, dtype=np.int32))  # ints are converted once to float32
    h.update(np.linspace(-20, 20, 9, dtype=np.float64))
    assert isinstance(h.hi, float) and isinstance(h.total, int)
    assert h.counts.shape == (64,) and h.edges.shape == (65,)
    assert h.total == 30 and h.counts.sum() == 30
    assert h.hi >= 20.0 and h.edges[0] == 0.0
    v = np.abs(np.concatenate([np.arange(-10, 11), np.linspace(-20, 20, 9)]))
    assert 0 <= h.quantile(0.5) - np.sort(v)[14] <= h.width
    lo, hi, bad = scan_range(np.array([1.0, -2.0, np.nan, 4.0]))
    assert (lo, hi, bad) == (-2.0, 4.0, 1)
    assert scan_range_numpy(np.array([1.0, -2.0, np.nan, 4.0], dtype=np.float32)) == (lo, hi, bad)
