"""Static INT8 for the ONNX target: QDQ from our calibration, mixed precision by layer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from layerwise import api
from layerwise.images import photo_crops
from layerwise.runtime import open_bundle, open_runner


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=photo_crops(16, seed=2))
    return path


def _quantized_inputs(model, node) -> bool:
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    return all(producer.get(i) == "DequantizeLinear" for i in node.input)


def _qdq(path) -> int:
    m = onnx.load(str(path / "model.onnx"))
    return sum(n.op_type == "QuantizeLinear" for n in m.graph.node)


def test_int8_mobilenet_qdq_and_agreement(bundles, calib, tmp_path):
    _, fp32 = bundles("zoo:mobilenet-v2")
    out = tmp_path / "q"
    m = api.compile("zoo:mobilenet-v2", api.CompileOptions(
        out=str(out), precision="int8", data=str(calib)))
    assert m["precision"] == "int8"
    assert m["plan"]["quantize"]["recipe"]["calibration"] == "mean_minmax"
    q = m["model"]["quantization"]
    assert q["calibration_batches"] == 16
    assert q["bias_corrected_layers"] == 53  # 52 convs and the classifier
    # the ReLU6 outputs between two convs: 17 into depthwise, 17 into pointwise convs
    assert q["equalized_activations"] == 34
    assert _qdq(out) >= 50  # every conv and the classifier get Q/DQ pairs
    model = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    # Clip (ReLU6) folded into the conv's output range; residual adds run in int8; the logits
    # stay float (no QuantizeLinear on the graph output)
    assert "Clip" not in ops
    assert all(_quantized_inputs(model, n) for n in model.graph.node if n.op_type == "Add")
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producer["output"] == "Gemm"
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
    from layerwise.base.errors import LayerwiseError

    with pytest.raises(LayerwiseError, match="needs --data"):
        api.compile("timm:resnet18", api.CompileOptions(out=str(tmp_path / "a"), precision="int8"))
    assert not (tmp_path / "a").exists()


def test_int8_runs_onnxruntime_int8_kernels_and_beats_fp32(bundles, calib, tmp_path):
    """The QDQ placement lets onnxruntime fuse int8 kernels (QLinearConv): latency is measured
    against the fp32 bundle in the same process, single thread, interleaved."""
    import time

    import onnxruntime as ort

    fp32_path, _ = bundles("zoo:mobilenet-v2")
    out = tmp_path / "q"
    api.compile("zoo:mobilenet-v2", api.CompileOptions(
        out=str(out), precision="int8", data=str(calib), db="none"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    q = ort.InferenceSession(str(out / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "QLinearConv" in fused and "Conv" not in fused
    one = ort.SessionOptions()
    one.intra_op_num_threads = 1
    f = ort.InferenceSession(str(fp32_path / "model.onnx"), one,
                             providers=["CPUExecutionProvider"])
    x = photo_crops(1, seed=3)
    times = {"q": [], "f": []}
    for _ in range(15):
        for name, s in (("q", q), ("f", f)):
            t0 = time.perf_counter()
            s.run(None, {"x": x})
            times[name].append(time.perf_counter() - t0)
    assert np.median(times["q"]) < np.median(times["f"])


def test_range_equalization_lowers_mobilenet_int8_error(tmp_path):
    """On MobileNetV2 (ReLU6 channels' ranges a hundredfold apart) the int8 model the ONNX
    target writes after the compiler's equalize pass is closer to fp32 than the same recipe
    without it (README: INT8 recipes), and onnxruntime's fused int8 kernels stay near the
    unfused Q/DQ graph."""
    from dataclasses import replace

    from layerwise.compiler.pipeline import finish
    from layerwise.sources import lift_spec
    from layerwise.targets import onnx as onnx_target
    from layerwise.targets.onnx.quantize import _session, u8s8_saturates

    ir = lift_spec("zoo:mobilenet-v2")
    calib = photo_crops(32, seed=2)
    ir.calibration = [{"x": calib[i:i + 1]} for i in range(len(calib))]
    x = photo_crops(32, seed=4)
    ref = ir.run({"x": torch.from_numpy(x)})[0].numpy()
    err = {}
    for name, recipe in (("on", onnx_target.INFO.recipe), ("off", replace(
            onnx_target.INFO.recipe, equalize_depthwise=0.0, equalize_pointwise=0.0))):
        ready = finish(ir, [], onnx_target.INFO.legalize,
                       {"recipe": recipe, "keep_fp32": [], "precision": "int8"})
        out_dir = tmp_path / name
        out_dir.mkdir()
        info = onnx_target.emit(ready, out_dir)["quantization"]
        assert (info["equalized_activations"] == 34) == (name == "on")
        assert info["weight_bits"] == (7 if u8s8_saturates() else 8)
        path = str(out_dir / "model.onnx")
        out = _session(path, optimize=True).run(None, {"x": x})[0]
        err[name] = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        unfused = _session(path).run(None, {"x": x})[0]
        assert np.linalg.norm(out - unfused) / np.linalg.norm(ref) < 0.5 * err[name]
    print(f"\nint8 rel_err to fp32: {err}")
    assert err["on"] < 0.95 * err["off"]

