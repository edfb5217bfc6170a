"""Static-batch artifacts fed a multiple of their batch run in slices (runtime/batching.py)."""

from __future__ import annotations

import numpy as np
import pytest

from layerwise.base.errors import BundleError
from layerwise.runtime.batching import run_in_slices, slice_step


def test_slice_step_only_for_a_larger_multiple_with_the_same_other_axes():
    shapes = {"ids": (1, 32), "mask": (1, 32)}
    feeds = {k: np.zeros((3, 32)) for k in shapes}
    assert slice_step(feeds, shapes) == 1
    assert slice_step({k: np.zeros((1, 32)) for k in shapes}, shapes) is None  # as it is
    assert slice_step({k: np.zeros((3, 16)) for k in shapes}, shapes) is None  # other axes
    assert slice_step({"ids": np.zeros((3, 32)), "mask": np.zeros((2, 32))}, shapes) is None
    assert slice_step({"x": np.zeros((6, 4))}, {"x": (2, 4)}) == 2
    assert slice_step({"x": np.zeros((5, 4))}, {"x": (2, 4)}) is None  # not a multiple
    assert slice_step({"x": np.zeros((6, 4))}, {"x": ("batch", 4)}) is None  # dynamic


def test_run_in_slices_concatenates_batch_major_outputs():
    calls = []

    def run(f):
        calls.append(len(f["x"]))
        return [f["x"] * 2, f["x"].sum(1, keepdims=True)]

    x = np.arange(12.0).reshape(6, 2)
    out = run_in_slices(run, {"x": x}, 2)
    assert calls == [2, 2, 2]
    np.testing.assert_array_equal(out[0], x * 2)
    np.testing.assert_array_equal(out[1], x.sum(1, keepdims=True))
    with pytest.raises(BundleError, match="fixed at batch 2"):
        run_in_slices(lambda f: [f["x"].sum()], {"x": x}, 2)
