"""Calibration on MiniLM's real activations: the additive attention mask (float32-min values)
is counted as saturated and every tensor gets a finite range, where onnxruntime's own entropy
calibrator fails on the same model and inputs."""

from __future__ import annotations

import numpy as np
import pytest

from layerwise.base.recipe import QuantRecipe
from layerwise.runtime import open_bundle
from layerwise.targets.onnx.quantize import calibrate


@pytest.fixture(scope="module")
def minilm(bundles):
    path, _ = bundles("zoo:minilm-l6")
    feeds = open_bundle(path).example_inputs()
    batches = [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(2)]
    return path / "model.onnx", batches


@pytest.mark.parametrize("method", ["entropy", "percentile", "mse", "minmax"])
def test_every_tensor_gets_a_finite_range(minilm, method):
    model, batches = minilm
    ranges = calibrate(model, batches, QuantRecipe(calibration=method,
                                                   symmetric_activations=method == "entropy"))
    assert len(ranges) > 100
    lo, hi = np.array(list(ranges.values())).T
    assert np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()
    assert (np.abs(lo) < 1e30).all()  # the mask's float32-min values were left out


def test_onnxruntime_entropy_calibrator_fails_on_the_same_model(minilm, tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    model, batches = minilm

    class Reader:
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(batches)

    cal = create_calibrator(model, augmented_model_path=str(tmp_path / "aug.onnx"),
                            calibrate_method=CalibrationMethod.Entropy)
    with pytest.raises(Exception, match="Too many bins"):
        cal.collect_data(Reader())
        cal.compute_data()
