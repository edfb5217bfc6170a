"""OpenVINO target: converted from the IR, verified in f32, profiled in f32 and the default."""

from __future__ import annotations

import numpy as np
import pytest

from layerwise.runtime import open_bundle, open_runner, profile
from tests.conftest import FIXTURES

pytest.importorskip("openvino", reason="the openvino extra is not installed")


@pytest.mark.parametrize("spec", ["timm:resnet18", "zoo:minilm-l6", f"{FIXTURES}:lstm_classifier"])
def test_verified_and_dynamic_batch(bundles, spec):
    path, manifest = bundles(spec, "openvino")
    assert manifest["verification"]["passed"] and manifest["verification"]["rel_err"] <= 1e-4
    assert {f["name"] for f in manifest["files"]} >= {"model.xml", "model.bin", "inputs.npz"}
    b = open_bundle(path)
    runner = open_runner(b.target, b.model_path)
    assert runner.precision == "f32"
    feeds = b.example_inputs()
    one = runner.run({k: v[:1] for k, v in feeds.items()})
    full = runner.run(feeds)
    np.testing.assert_allclose(one[0][0], full[0][0], rtol=1e-4, atol=1e-5)


def test_profile_reports_both_precisions(bundles):
    path, _ = bundles(f"{FIXTURES}:lstm_classifier", "openvino")
    r = profile(path, runs=5, warmup=1, per_op=True)
    assert set(r["variants"]) == {"f32", "plugin default"}
    assert r["variants"]["plugin default"]["p50"] > 0 and r["ops"]
