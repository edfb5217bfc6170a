"""Static INT8 for the ONNX target: our calibration, onnxruntime's QDQ graph annotation.

Calibration runs where the graph will run: every float tensor of the fp32 ONNX model (after
the exporter's fusions, e.g. BatchNorm into Conv) is streamed into a `cpp_ext` histogram
over the calibration batches, and the recipe's method (minmax, percentile, entropy, mse)
picks each clipping range. onnxruntime's `quantize_static` then places QuantizeLinear /
DequantizeLinear pairs from those ranges (handed over as its calibration cache), skipping
the nodes of layers the plan keeps in fp32.
"""

from __future__ import annotations

import ast
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

from layerwise.compiler.passes.quantize import QuantRecipe
from layerwise.cpp_ext import (
    StreamingHistogram,
    entropy_range,
    mse_range,
    percentile_range,
)
from layerwise.errors import TargetError


def float_tensors(model) -> list[str]:
    """Names of the float32 tensors produced by nodes (candidates for activation ranges)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {vi.name for vi in [*inferred.graph.value_info, *inferred.graph.output,
                                 *inferred.graph.input]
              if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    out = [i.name for i in model.graph.input if i.name in floats]
    for node in model.graph.node:
        out += [o for o in node.output if o in floats]
    return list(dict.fromkeys(out))


def calibrate(fp32_path: Path, batches: list[dict[str, np.ndarray]],
              recipe: QuantRecipe) -> dict[str, tuple[float, float]]:
    """Clipping range of every float tensor over `batches` by the recipe's method."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fp32_path))
    names = float_tensors(model)
    have = {o.name for o in model.graph.output}
    for n in names:
        if n not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=n))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    outputs = [o.name for o in sess.get_outputs()]
    hists = {n: StreamingHistogram(recipe.bins, signed=not recipe.symmetric_activations, name=n)
             for n in names}
    for batch in batches:
        feeds = {i.name: batch[i.name] for i in sess.get_inputs()}
        for name, value in zip(outputs, sess.run(None, feeds)):
            if name in hists and value.size:
                hists[name].update(value)
    return {n: _range(h, recipe) for n, h in hists.items() if h.total}


def _range(hist: StreamingHistogram, recipe: QuantRecipe) -> tuple[float, float]:
    method = recipe.calibration
    if method == "minmax":
        lo, hi = float(hist.min), float(hist.max)
        if recipe.symmetric_activations:
            m = max(abs(lo), abs(hi))
            return -m, m
        return lo, hi
    if method == "percentile":
        r = percentile_range(hist, recipe.percentile)
    elif method == "entropy":
        r = entropy_range(hist, symmetric=recipe.symmetric_activations)
    elif method == "mse":
        r = mse_range(hist)
    else:
        raise TargetError(f"unknown calibration method {method!r}; use minmax, percentile, "
                          "entropy or mse")
    lo, hi = float(np.min(r.lo)), float(np.max(r.hi))
    if recipe.symmetric_activations:
        m = max(abs(lo), abs(hi))
        return -m, m
    return lo, hi


def layer_nodes(model, layers: set[str]) -> list[str]:
    """ONNX node names that belong to one of `layers`: by the exporter's module-scope
    metadata, or by a weight named after the layer (a Conv fused with its BatchNorm carries
    the BatchNorm's scope but the Conv's weight)."""
    picked = []
    prefixes = tuple(f"{p}." for p in layers)
    weights = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if any(i in weights and i.startswith(prefixes) for i in node.input):
            picked.append(node.name)
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        if any(s in layers for s in scopes):
            picked.append(node.name)
    return picked


def activation_matmuls(model) -> list[str]:
    """MatMul nodes with no weight operand (attention's QK^T and AV): per-tensor int8 on both
    sides costs transformers most of their INT8 error for little speed."""
    weights = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul"
            and not any(i in weights or i in consts for i in n.input)]


def quantize_model(fp32_path: Path, out_path: Path, batches: list[dict[str, np.ndarray]],
                   recipe: QuantRecipe, keep_fp32: set[str]) -> dict:
    """Write the QDQ model to out_path; returns what was done (for the manifest)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    if not batches:
        raise TargetError("INT8 needs calibration data: pass --data with a few hundred inputs")
    ranges = calibrate(fp32_path, batches, recipe)
    model = onnx.load(str(fp32_path))
    exclude = layer_nodes(model, keep_fp32)
    if recipe.weighted_matmuls_only:
        exclude += activation_matmuls(model)
    data = TensorsData(CalibrationMethod.MinMax, {
        n: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for n, (lo, hi) in ranges.items()})
    act = QuantType.QInt8 if recipe.symmetric_activations else QuantType.QUInt8
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "calibration.json"
        save_tensors_data(data, cache)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                quantize_static(
                    str(fp32_path), str(out_path), calibration_data_reader=None,
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(recipe.op_types),
                    per_channel=recipe.per_channel, activation_type=act,
                    weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                    extra_options={"ActivationSymmetric": recipe.symmetric_activations,
                                   "WeightSymmetric": True,
                                   "QuantizeBias": recipe.quantize_bias})
        except Exception as e:  # noqa: BLE001 - onnxruntime raises many types
            raise TargetError(f"onnxruntime could not quantize the model: "
                              f"{str(e).splitlines()[0][:300]}") from e
    q = onnx.load(str(out_path))
    qdq = sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear")
    return {"calibrated_tensors": len(ranges), "calibration_batches": len(batches),
            "excluded_nodes": len(exclude), "quantize_linear_nodes": qdq}
