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


def test_runner_compiles_each_input_shape_statically(bundles):
    """A dynamic-batch bundle runs on a model reshaped and compiled for each shape it is fed
    (OpenVINO's static-shape path), up to MAX_SHAPES; the outputs equal the dynamic model's,
    and a shape the model cannot take is a one-line error."""
    from layerwise.base.errors import BundleError
    from layerwise.runtime import openvino as ov_runtime

    path, _ = bundles("timm:resnet18", "openvino")
    b = open_bundle(path)
    x = b.example_inputs()["x"]
    ours = open_runner(b.target, b.model_path)
    dynamic = open_runner(b.target, b.model_path, specialize=False)
    assert ours.specialize and not dynamic.specialize
    batches = [1, 2, 1, *range(3, 3 + ov_runtime.MAX_SHAPES)]
    for n in batches:
        feeds = {"x": np.concatenate([x] * 4)[:n]}
        np.testing.assert_allclose(ours.run(feeds)[0], dynamic.run(feeds)[0], rtol=1e-5,
                                   atol=1e-5)
        if n == 1:
            assert not ours.compiled.inputs[0].get_partial_shape().is_dynamic
    assert len(ours._static) == ov_runtime.MAX_SHAPES  # later shapes ran on the dynamic model
    assert ours.compiled.inputs[0].get_partial_shape().is_dynamic
    with pytest.raises(BundleError, match=r"input x has shape \[1, 3, 100, 224\]"):
        ours.run({"x": x[:1, :, :100]})


def test_profile_reports_both_precisions(bundles):
    path, _ = bundles(f"{FIXTURES}:lstm_classifier", "openvino")
    r = profile(path, runs=5, warmup=1, per_op=True)
    assert set(r["variants"]) == {"f32", "plugin default"}
    assert r["variants"]["plugin default"]["p50"] > 0 and r["ops"]


ZERO_POINT_0 = {"symmetric_activations": True, "unsigned_nonnegative": True,
                "asymmetric_inputs": True, "transformer_asymmetric": True}


@pytest.mark.parametrize("zero_point_0", [False, True], ids=["asymmetric", "zero-point-0"])
def test_int8_from_our_qdq_runs_int8_convolutions(bundles, tmp_path, monkeypatch,
                                                   zero_point_0):
    """INT8 for OpenVINO: the ONNX target's QDQ model (our calibration) becomes FakeQuantize
    nodes; the CPU plugin runs every convolution in int8. The default recipe is asymmetric
    uint8; the zero-point-0 recipe has int8 levels around zero where a tensor is signed (the
    residual stream into the expansion convs), uint8 from zero where it is non-negative
    (ReLU6 outputs), and the image input asymmetric."""
    from dataclasses import replace

    from layerwise import api
    from layerwise.images import photo_crops
    from layerwise.targets import openvino

    if zero_point_0:
        monkeypatch.setattr(openvino, "INFO", replace(
            openvino.INFO, recipe=replace(openvino.INFO.recipe, **ZERO_POINT_0)))
    np.savez(tmp_path / "calib.npz", x=photo_crops(16, seed=2))
    _, fp32 = bundles("zoo:mobilenet-v2")
    out = tmp_path / "q"
    m = api.compile("zoo:mobilenet-v2", api.CompileOptions(
        target="openvino", out=str(out), precision="int8", data=str(tmp_path / "calib.npz")))
    assert m["precision"] == "int8" and m["verification"]["passed"]
    assert m["plan"]["quantize"]["recipe"]["symmetric_activations"] is zero_point_0
    assert m["model"]["quantization"]["fake_quantize_nodes"] >= 50
    assert m["sizes"]["model_bytes"] < 0.35 * fp32["sizes"]["model_bytes"]
    b = open_bundle(out)
    runner = open_runner(b.target, b.model_path)
    logits = runner.run({"x": b.example_inputs()["x"][:1]})[0]
    assert 281 <= int(logits[0].argmax()) <= 285  # the chelsea photo is still a cat
    runtime = runner.compiled.get_runtime_model()
    convs = [op.get_rt_info()["runtimePrecision"].astype(str) for op in runtime.get_ordered_ops()
             if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    # every conv runs an int8 kernel (u8 or i8 input: the plugin's pick depends on the CPU,
    # e.g. i8 for the convs fed by the signed residual stream under zero-point-0)
    assert len(convs) >= 50 and set(convs) <= {"u8", "i8"}
    if not zero_point_0:
        return
    model = b.model_path
    import openvino as ov

    fqs = [op for op in ov.Core().read_model(str(model)).get_ordered_ops()
           if op.get_type_name() == "FakeQuantize"
           and op.input_value(0).get_node().get_type_name() != "Constant"]
    signed = 0
    for fq in fqs:
        lo, hi = (float(fq.input_value(i).get_node().get_data().ravel()[0]) for i in (1, 2))
        if fq.input_value(0).get_node().get_type_name() == "Parameter":
            assert lo < 0 < hi  # the image: asymmetric uint8
        elif lo < 0:  # signed: int8 levels -128..127 around zero
            signed += 1
            np.testing.assert_allclose(-lo / hi, 128 / 127, rtol=1e-4)
        else:
            assert lo == 0.0
    assert signed >= 17


def test_transformer_int8_is_nncf_quantized_and_keeps_fp32_layers(bundles, tmp_path):
    """INT8 of MiniLM for OpenVINO goes through NNCF's transformer model type: every linear
    runs an int8 kernel in the CPU plugin, the embeddings stay close to fp32 on sentences it
    did not calibrate on, and the layers kept in fp32 run their linears in f32."""
    from layerwise import api
    from layerwise.text import stdlib_sentences
    from tests.targets.test_precisions import _cosine, _encode

    s = stdlib_sentences()
    (tmp_path / "calib.txt").write_text("\n".join(s[0::2]) + "\n")
    feeds = _encode(s[1::2])
    fp32_path, _ = bundles("zoo:minilm-l6", "openvino")
    ref = open_runner("openvino", fp32_path / "model.xml").run(feeds)[0]

    def build(name: str, keep: str | None = None):
        m = api.compile("zoo:minilm-l6", api.CompileOptions(
            target="openvino", out=str(tmp_path / name), precision="int8",
            data=str(tmp_path / "calib.txt"), keep_fp32=keep, db="none"))
        runner = open_runner("openvino", tmp_path / name / "model.xml")
        out = runner.run(feeds)[0]
        linears = [op.get_rt_info()["runtimePrecision"].astype(str)
                   for op in runner.compiled.get_runtime_model().get_ordered_ops()
                   if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"]
        return m, out, linears

    m, out, linears = build("q")
    q = m["model"]["quantization"]
    assert q["quantizer"].startswith("nncf") and q["model_type"] == "transformer"
    assert len(linears) == 36 and set(linears) <= {"u8", "i8"}
    assert _cosine(ref, out).mean() > 0.99
    m, out, linears = build("k", "bert.encoder.layer.0")
    assert m["model"]["quantization"]["excluded_nodes"] >= 6
    assert linears.count("f32") >= 6 and _cosine(ref, out).mean() > 0.99
