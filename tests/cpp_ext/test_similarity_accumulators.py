"""Cosine / angular accumulators and linear CKA: native == reference, planted answers, errors.

Tolerances: cosine sums 1e-9 relative (float64 sums in another order); CKA 1e-5 absolute
(Gram products in float32 BLAS, accumulated in float64).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerwise import cpp_ext
from layerwise.base.errors import LayerwiseError
from layerwise.cpp_ext import CKAAccumulator, CosineAccumulator, linear_cka
from layerwise.cpp_ext.similarity import cosine_sums_numpy, linear_cka_numpy

needs_native = pytest.mark.skipif(cpp_ext.native is None, reason="native kernels not built")


@needs_native
@settings(max_examples=50, deadline=None)
@given(shape=st.tuples(st.integers(1, 5), st.integers(1, 40), st.integers(1, 700)),
       seed=st.integers(0, 2**31), masked=st.booleans(), zeros=st.booleans(),
       scale=st.sampled_from([1e-20, 1.0, 1e30]))
def test_cosine_native_equals_reference(*, shape, seed, masked, zeros, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    y = (x * 0.5 + rng.standard_normal(shape) * scale).astype(np.float32)
    if zeros:
        x[:, :, ::3] = 0.0  # zero-norm tokens are skipped and counted
    mask = (rng.random((shape[0], shape[2])) > 0.3).astype(np.uint8) if masked else None
    got = cpp_ext.native.cosine_sums(x.reshape(-1), y.reshape(-1), None if mask is None else
                                     mask.reshape(-1), *shape)
    want = cosine_sums_numpy(x, y, mask, shape)
    assert got[2:] == want[2:]
    np.testing.assert_allclose(got[:2], want[:2], rtol=1e-9, atol=1e-9)


def test_planted_cosines_and_streaming():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 10, 32)).astype(np.float32)
    for y, cos, ang in [(x, 1.0, 0.0), (-x, -1.0, 1.0), (3 * x, 1.0, 0.0)]:
        acc = CosineAccumulator()
        acc.update(x, y)
        assert acc.cosine == pytest.approx(cos, abs=1e-6)
        assert acc.angular == pytest.approx(ang, abs=1e-3)
    e0, e1 = np.eye(2, dtype=np.float32)
    acc = CosineAccumulator()
    acc.update(np.tile(e0, (5, 1)), np.tile(e1, (5, 1)))
    assert (acc.cosine, acc.angular, acc.count) == (0.0, 0.5, 5)
    # Batches stream: two halves give the one-shot result; axis=1 treats NCHW pixels as tokens.
    a = rng.standard_normal((6, 8, 5, 5)).astype(np.float32)
    b = np.tanh(a)
    whole, halves = CosineAccumulator(axis=1), CosineAccumulator(axis=1)
    whole.update(a, b)
    halves.update(a[:3], b[:3])
    halves.update(a[3:], b[3:])
    assert halves.count == whole.count == 6 * 25
    assert halves.cosine == pytest.approx(whole.cosine, rel=1e-12)
    ref = cosine_sums_numpy(np.moveaxis(a, 1, -1), np.moveaxis(b, 1, -1), None, (150, 8, 1))
    assert whole.cosine == pytest.approx(ref[0] / ref[2], rel=1e-12)


def test_cosine_mask_zero_tokens_and_errors():
    x = np.ones((2, 3, 4), dtype=np.float32)
    y = x.copy()
    x[0, 1] = 0.0
    acc = CosineAccumulator(name="block.2")
    acc.update(x, y, mask=np.array([[1, 1, 1], [0, 0, 1]]))
    assert (acc.count, acc.zero) == (3, 1)
    bad = y.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(LayerwiseError, match=r"block\.2.*NaN/Inf"):
        acc.update(x, bad)
    assert acc.count == 3  # untouched
    with pytest.raises(LayerwiseError, match="same shape"):
        acc.update(x, y[:, :2])
    with pytest.raises(LayerwiseError, match="mask has 2 flags for 6 tokens"):
        acc.update(x, y, mask=np.ones(2))
    with pytest.raises(LayerwiseError, match="no token counted"):
        _ = CosineAccumulator().cosine


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 300), d1=st.integers(1, 40), d2=st.integers(1, 40),
       batches=st.integers(1, 4), seed=st.integers(0, 2**31),
       offset=st.sampled_from([0.0, 1e3]))
def test_streaming_cka_equals_reference(*, n, d1, d2, batches, seed, offset):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d1)) + offset).astype(np.float32)
    w = rng.standard_normal((d1, d2))
    y = (np.tanh(x - offset) @ w + rng.standard_normal((n, d2)) + offset).astype(np.float32)
    acc = CKAAccumulator()
    for idx in np.array_split(np.arange(n), batches):
        if idx.size:
            acc.update(x[idx], y[idx])
    want = linear_cka_numpy(x, y)
    assert acc.cka() == pytest.approx(want, abs=1e-5)
    xc = x.astype(np.float64) - x.mean(axis=0)
    yc = y.astype(np.float64) - y.mean(axis=0)
    hsic = np.linalg.norm(xc.T @ yc) ** 2 / (n - 1) ** 2
    assert acc.hsic() == pytest.approx(hsic, rel=1e-4)


def test_cka_planted_invariances():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, (x @ q * 5.0 + 2.0).astype(np.float32)) == pytest.approx(1.0, abs=1e-5)
    assert linear_cka(x, rng.standard_normal((500, 8))) < 0.1
    assert linear_cka(x, np.ones((500, 3))) == 0.0


def test_cka_errors():
    acc = CKAAccumulator(name="pair")
    with pytest.raises(LayerwiseError, match="need at least 2 samples"):
        acc.cka()
    with pytest.raises(LayerwiseError, match="need \\(samples, features\\)"):
        acc.update(np.ones(3), np.ones(3))
    with pytest.raises(LayerwiseError, match="x has 3 samples, y 2"):
        acc.update(np.ones((3, 2)), np.ones((2, 2)))
    acc.update(np.ones((3, 2)), np.ones((3, 4)))
    with pytest.raises(LayerwiseError, match="feature sizes changed"):
        acc.update(np.ones((3, 3)), np.ones((3, 4)))
    with pytest.raises(LayerwiseError, match="NaN/Inf"):
        acc.update(np.full((3, 2), np.inf), np.ones((3, 4)))
