"""Without the compiled module every public kernel still works, through NumPy, with one warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from layerwise import cpp_ext


def _run_everything() -> list:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 24)).astype(np.float32)
    out = []
    for signed in (False, True):
        h = cpp_ext.StreamingHistogram(256, signed=signed, axis=None if signed else 1)
        h.update(x)
        h.update(3 * x)
        out += [h.counts.copy(), cpp_ext.percentile_range(h, 99.0).hi,
                cpp_ext.entropy_range(h, 32, symmetric=not signed).hi,
                cpp_ext.mse_range(h, 32).hi]
    a, b = x.reshape(-1)[:400], np.tanh(x).reshape(-1)[:400]
    out += [cpp_ext.mutual_information(a, b), cpp_ext.mutual_information_ksg(a, b),
            cpp_ext.scan_range(x)]
    acc = cpp_ext.CosineAccumulator()
    acc.update(x, np.tanh(x))
    out += [acc.cosine, acc.angular, cpp_ext.linear_cka(x.reshape(-1, 24), np.tanh(x[..., :5]))]
    return out


@pytest.mark.skipif(cpp_ext.native is None, reason="native kernels not built: nothing to compare")
def test_numpy_path_matches_native_and_warns_once(monkeypatch):
    fast = _run_everything()
    monkeypatch.setattr(cpp_ext, "native", None)
    monkeypatch.setattr(cpp_ext, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slow = _run_everything()
    missing = [w for w in caught if "native kernels are not built" in str(w.message)]
    assert len(missing) == 1 and "pip install --no-build-isolation -e ." in str(missing[0].message)
    for f, s in zip(fast, slow, strict=True):
        np.testing.assert_allclose(np.asarray(f, dtype=float), np.asarray(s, dtype=float),
                                   rtol=1e-5, atol=1e-9)
