"""Mutual information: native == NumPy reference, planted Gaussian answers, edge cases.

Tolerance: 1e-10 absolute (same counts / neighbour counts, sums in another order).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from layerwise import cpp_ext
from layerwise.base.errors import LayerwiseError
from layerwise.cpp_ext import mutual_information, mutual_information_ksg
from layerwise.cpp_ext.mutual_info import mutual_information_ksg_numpy, mutual_information_numpy

needs_native = pytest.mark.skipif(cpp_ext.native is None, reason="native kernels not built")

finite = st.floats(-1e6, 1e6, width=32, allow_nan=False)
# Few distinct values: exercises ties and k exact duplicates (eps = 0).
coarse = st.sampled_from([-2.0, 0.0, 0.5, 1.0, 3.0])


@needs_native
@settings(max_examples=50, deadline=None)
@given(pair=st.integers(2, 300).flatmap(lambda n: st.tuples(
    hnp.arrays(np.float32, n, elements=finite | coarse),
    hnp.arrays(np.float32, n, elements=finite | coarse))),
       bins=st.sampled_from([1, 2, 16, 64]))
def test_binned_native_equals_reference(pair, bins):
    x, y = pair
    assert mutual_information(x, y, bins) == pytest.approx(
        mutual_information_numpy(x, y, bins), abs=1e-10)


@needs_native
@settings(max_examples=40, deadline=None)
@given(pair=st.integers(5, 250).flatmap(lambda n: st.tuples(
    hnp.arrays(np.float32, n, elements=finite | coarse),
    hnp.arrays(np.float32, n, elements=finite | coarse))),
       k=st.integers(1, 4))
def test_ksg_native_equals_reference(pair, k):
    x, y = pair
    assert mutual_information_ksg(x, y, k) == pytest.approx(
        mutual_information_ksg_numpy(x, y, k), abs=1e-10)


@needs_native
def test_ksg_native_equals_reference_continuous():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(1500).astype(np.float32)
    y = (np.sin(3 * x) + 0.3 * rng.standard_normal(1500)).astype(np.float32)
    assert mutual_information_ksg(x, y, 3) == pytest.approx(
        mutual_information_ksg_numpy(x, y, 3), abs=1e-10)
    # ReLU outputs: a third of each variable is exactly 0 (one grid column and row of ties).
    a, b = np.maximum(x, 0), np.maximum(y, 0)
    assert mutual_information_ksg(a, b, 3) == pytest.approx(
        mutual_information_ksg_numpy(a, b, 3), abs=1e-10)


@pytest.mark.parametrize("rho", [0.0, 0.6, 0.95])
def test_planted_gaussian_mutual_information(rho):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(20_000)
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal(20_000)
    truth = -0.5 * math.log(1 - rho**2)
    assert mutual_information_ksg(x, y, 3) == pytest.approx(truth, abs=0.02)
    # The plug-in estimate is biased upwards by about (cells - 1) / (2 n).
    assert mutual_information(x, y, 32) == pytest.approx(truth, abs=0.06)


def test_constant_and_tiny_inputs():
    x = np.arange(10, dtype=np.float32)
    assert mutual_information(np.zeros(10), x) == 0.0
    assert mutual_information(x, x, 1) == 0.0
    assert mutual_information([1.0], [2.0]) == 0.0
    assert np.isfinite(mutual_information_ksg(np.zeros(10), x, 3))


def test_clear_errors():
    with pytest.raises(LayerwiseError, match="x has 3 values, y has 2"):
        mutual_information(np.ones(3), np.ones(2))
    with pytest.raises(LayerwiseError, match="empty"):
        mutual_information_ksg(np.ones(0), np.ones(0))
    with pytest.raises(LayerwiseError, match="NaN/Inf"):
        mutual_information(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(LayerwiseError, match="NaN/Inf"):
        mutual_information_ksg(np.arange(5.0), np.array([1, 2, 3, np.inf, 5]))
    with pytest.raises(LayerwiseError, match="more than k samples"):
        mutual_information_ksg(np.arange(3.0), np.arange(3.0), k=3)
    with pytest.raises(LayerwiseError, match="bins must be"):
        mutual_information(np.arange(3.0), np.arange(3.0), bins=0)
