"""Static INT8 for the ONNX target: QDQ from our calibration, mixed precision by layer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from layerwise import api
from layerwise.images import photo_crops
from layerwise.runtime import open_bundle, open_runner


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=photo_crops(16, seed=2))
    return path


def _qdq(path) -> int:
    m = onnx.load(str(path / "model.onnx"))
    return sum(n.op_type == "QuantizeLinear" for n in m.graph.node)


def test_int8_mobilenet_qdq_and_agreement(bundles, calib, tmp_path):
    _, fp32 = bundles("zoo:mobilenet-v2")
    out = tmp_path / "q"
    m = api.compile("zoo:mobilenet-v2", api.CompileOptions(
        out=str(out), precision="int8", data=str(calib)))
    assert m["precision"] == "int8" and m["plan"]["quantize"]["recipe"]["calibration"] == "mse"
    assert m["model"]["quantization"]["calibration_batches"] == 16
    assert _qdq(out) >= 50  # every conv and the classifier get Q/DQ pairs
    assert m["sizes"]["model_bytes"] < 0.35 * fp32["sizes"]["model_bytes"]
    assert m["verification"]["passed"]
    # the chelsea photo (row 0 of the bundle's inputs) is still a cat
    b = open_bundle(out)
    logits = open_runner(b.target, b.model_path).run({"x": b.example_inputs()["x"][:1]})[0]
    assert 281 <= int(logits[0].argmax()) <= 285

    keep = api.compile("zoo:mobilenet-v2", api.CompileOptions(
        out=str(tmp_path / "k"), precision="int8", data=str(calib),
        keep_fp32="features.0.0,classifier.1"))
    assert keep["model"]["quantization"]["excluded_nodes"] >= 2
    assert _qdq(tmp_path / "k") < _qdq(out)


def test_int8_needs_data_and_known_layers(tmp_path):
    from layerwise.errors import LayerwiseError

    with pytest.raises(LayerwiseError, match="needs --data"):
        api.compile("timm:resnet18", api.CompileOptions(out=str(tmp_path / "a"), precision="int8"))
    assert not (tmp_path / "a").exists()
