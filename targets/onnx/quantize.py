"""Static INT8 for the ONNX target: our calibration, onnxruntime's QDQ graph annotation.

Calibration runs where the graph will run: every float tensor of the fp32 ONNX model (after
the exporter's fusions, e.g. BatchNorm into Conv) is streamed into a `cpp_ext` histogram
over the calibration batches, and the recipe's method (minmax, percentile, entropy, mse)
picks each clipping range. onnxruntime's `quantize_static` then places QuantizeLinear /
DequantizeLinear pairs from those ranges (handed over as its calibration cache), skipping
the nodes of layers the plan keeps in fp32.

Placement follows onnxruntime's CPU kernels: Q/DQ around every op that has an int8 kernel
(Conv, Gemm, MatMul, Add, Clip, pooling, data movement), so the graph optimizer fuses
them into QLinearConv/QLinearAdd/QGemm chains; a float island between int8 ops would cost a
dequantize and a quantize and block the fusion. Clip/Relu after a Conv are folded into the
Conv's output range. The model's outputs stay float (quantizing the logits flips close
top-1 decisions for nothing). Bias correction (as NNCF's FastBiasCorrection, in the ONNX
graph): every quantized Conv/Gemm is also run on the fp32 model's own input with its int8
weights, and its bias absorbs the mean output shift the weights' rounding adds. Only the
weights' shift is corrected: the input's quantization shift is left out, and so is an
empirical layer-by-layer correction inside the int8 model (both did worse; README: INT8
recipes). The recipe's range equalization (the compiler's `equalize` pass) has already
rescaled the channels between two convs on the IR, so one per-tensor scale fits them all.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from layerwise.base.errors import TargetError
from layerwise.base.recipe import QuantRecipe
from layerwise.cpp_ext import HISTOGRAM_METHODS, StreamingHistogram, clip_range
from layerwise.devices.cpu import cpu_flags, has_vnni, is_x86
from layerwise.runtime.taps import node_scopes
from layerwise.targets.onnx.session import ort_session as _session


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
    extremes: dict[str, list] = {}
    lowest: dict[str, float] = {}
    for batch in batches:
        feeds = {i.name: batch[i.name] for i in sess.get_inputs()}
        for name, value in zip(outputs, sess.run(None, feeds)):
            if name in hists and value.size:
                hists[name].update(value)
                lowest[name] = min(lowest.get(name, np.inf), float(np.nanmin(value)))
                if recipe.calibration == "mean_minmax":
                    finite = value[np.isfinite(value) & (np.abs(value) < 1e30)]
                    if finite.size:
                        extremes.setdefault(name, []).append((finite.min(), finite.max()))
    if recipe.calibration == "mean_minmax":  # NNCF's activation default: per-input extremes
        ranges = {n: _symmetric(*np.mean(np.array(v, np.float64), axis=0), recipe)
                  for n, v in extremes.items()}
    else:
        ranges = {n: _range(h, recipe) for n, h in hists.items() if h.total}
    if recipe.symmetric_activations and recipe.unsigned_nonnegative:
        ranges = {n: (0.0, hi) if lowest[n] >= 0 else (lo, hi) for n, (lo, hi) in ranges.items()}
    return ranges


def _symmetric(lo: float, hi: float, recipe: QuantRecipe) -> tuple[float, float]:
    if recipe.symmetric_activations:
        m = max(abs(lo), abs(hi))
        return -float(m), float(m)
    return float(lo), float(hi)


def unsigned_tensors(ranges: dict[str, tuple[float, float]], recipe: QuantRecipe,
                     model) -> list[str]:
    """Tensors that get uint8 zero-point 0 under a symmetric recipe: calibrated lo == 0, and
    the input of a Relu/Clip it alone consumes (onnxruntime gives that input the activation's
    output range and folds the activation into it)."""
    if not (recipe.symmetric_activations and recipe.unsigned_nonnegative):
        return []
    out = {n for n, (lo, _) in ranges.items() if lo == 0.0}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers[i] = consumers.get(i, 0) + 1
    for node in model.graph.node:
        if (node.op_type in ("Relu", "Clip") and node.output[0] in out
                and consumers.get(node.input[0]) == 1):
            out.add(node.input[0])
    return sorted(out)


def _range(hist: StreamingHistogram, recipe: QuantRecipe) -> tuple[float, float]:
    if recipe.calibration not in HISTOGRAM_METHODS:
        raise TargetError(f"unknown calibration method {recipe.calibration!r}; use minmax, "
                          "mean_minmax, percentile, entropy or mse")
    return clip_range(hist, recipe.calibration, recipe.percentile,
                      recipe.symmetric_activations)


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
        if any(s in layers for s in node_scopes(node)):
            picked.append(node.name)
    return picked


def activation_matmuls(model) -> list[str]:
    """MatMul nodes with no weight operand (attention's QK^T and AV): per-tensor int8 on both
    sides costs transformers most of their INT8 error for little speed."""
    weights = {i.name for i in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul"
            and not any(i in weights or i in consts for i in n.input)]


def stack_batches(batches: list[dict[str, np.ndarray]], size: int = 16) -> list[dict]:
    """Single examples grouped into batches of `size` where their shapes agree (faster
    statistics; the batch dimension is dynamic)."""
    out: list[dict] = []
    group: list[dict] = []

    def flush() -> None:
        if group:
            out.append({k: np.concatenate([g[k] for g in group]) for k in group[0]})
            group.clear()

    for b in batches:
        if group and (len(group) == size or any(
                group[0][k].shape[1:] != v.shape[1:] for k, v in b.items())):
            flush()
        group.append(b)
    flush()
    return out


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def bias_shifts(fp32, qdq, batches: list[dict[str, np.ndarray]],
                ops: tuple[str, ...] = ("Conv", "Gemm"),
                with_inputs: bool = False) -> dict[str, np.ndarray]:
    """Per quantized layer (node name): mean over the batches of its fp32 output minus the
    output of its int8 version fed the same fp32 input (quantized by the QDQ model's own
    scales unless `with_inputs` is False: then only the weights' error is measured), per
    output channel. NNCF's FastBiasCorrection, on the ONNX graph."""
    import onnx
    from onnx import helper

    f = onnx.ModelProto()
    f.CopyFrom(fp32)
    inits = {i.name: i for i in qdq.graph.initializer}
    have = {i.name for i in f.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    qnodes = {n.name: n for n in qdq.graph.node}
    pairs = []
    for n in fp32.graph.node:
        q = qnodes.get(n.name)
        if n.op_type not in ops or q is None or len(n.input) < 3 or not n.input[2]:
            continue
        dq_x, dq_w = producer.get(q.input[0]), producer.get(q.input[1])
        if not (dq_x and dq_w and dq_x.op_type == dq_w.op_type == "DequantizeLinear"):
            continue
        q_x = producer.get(dq_x.input[0])
        if not (q_x and q_x.op_type == "QuantizeLinear") or dq_w.input[0] not in inits:
            continue
        p = f"{n.name}__bias_correction"
        x = n.input[0]
        if with_inputs:
            x = p + "_x"
            f.graph.node.extend([
                helper.make_node("QuantizeLinear", [n.input[0], *q_x.input[1:]], [p + "_xq"],
                                 **_attrs(q_x)),
                helper.make_node("DequantizeLinear", [p + "_xq", *dq_x.input[1:]], [x],
                                 **_attrs(dq_x))])
        f.graph.node.extend([
            helper.make_node("DequantizeLinear", list(dq_w.input), [p + "_w"], **_attrs(dq_w)),
            helper.make_node(n.op_type, [x, p + "_w", *n.input[2:]], [p + "_y"],
                             **_attrs(n))])
        for t in [*q_x.input[1:], *dq_x.input[1:], *dq_w.input]:
            if t in inits and t not in have:
                f.graph.initializer.append(inits[t])
                have.add(t)
        pairs.append((n.name, n.output[0], p + "_y"))
    if not pairs:
        return {}
    for _, a, b in pairs:
        f.graph.output.extend([onnx.ValueInfoProto(name=a), onnx.ValueInfoProto(name=b)])
    sess = _session(f)
    names = [x for _, a, b in pairs for x in (a, b)]
    n_ops = {n.name: n.op_type for n in fp32.graph.node}
    inputs = [i.name for i in sess.get_inputs()]
    total: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    for batch in batches:
        values = dict(zip(names, sess.run(names, {k: batch[k] for k in inputs})))
        for name, a, b in pairs:
            d = values[a].astype(np.float64) - values[b]
            # Conv: NC... (channel axis 1); Gemm: rows x channels
            d = np.moveaxis(d, 1, -1) if n_ops[name] == "Conv" else d
            d = d.reshape(-1, d.shape[-1])
            total[name] = total.get(name, 0) + d.sum(axis=0)
            count[name] = count.get(name, 0) + len(d)
    return {k: (v / count[k]).astype(np.float32) for k, v in total.items()}


def shift_biases(model, shifts: dict[str, np.ndarray]) -> int:
    """Add `shifts` to the biases of the named Conv/Gemm nodes (in place); returns how many."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    done = 0
    for n in model.graph.node:
        bias = inits.get(n.input[2]) if n.name in shifts and len(n.input) > 2 else None
        if bias is None or users[bias.name] != 1:
            continue
        value = numpy_helper.to_array(bias)
        if value.shape != shifts[n.name].shape:
            continue
        bias.CopyFrom(numpy_helper.from_array((value + shifts[n.name]).astype(value.dtype),
                                              bias.name))
        done += 1
    return done


def linears_after(model, ops: set[str]) -> list[str]:
    """Gemm/MatMul nodes whose input comes from one of `ops` (through reshapes/transposes)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type not in ("Gemm", "MatMul"):
            continue
        src = producer.get(n.input[0])
        while src is not None and src.op_type in ("Reshape", "Transpose", "Flatten"):
            src = producer.get(src.input[0])
        if src is not None and src.op_type in ops:
            out.append(n.name)
    return out


def quantize_model(fp32_path: Path, out_path: Path, batches: list[dict[str, np.ndarray]],
                   recipe: QuantRecipe, keep_fp32: set[str]) -> dict:
    """Write the QDQ model to out_path; returns what was done (for the manifest)."""
    import onnx

    if not batches:
        raise TargetError("INT8 needs calibration data: pass --data with a few hundred inputs")
    model = onnx.load(str(fp32_path))
    exclude = layer_nodes(model, keep_fp32)
    if recipe.weighted_matmuls_only:
        exclude += activation_matmuls(model)
    if any(n.op_type == "Softmax" for n in model.graph.node):  # attention: a transformer
        recipe = replace(recipe, op_types=tuple(recipe.transformer_op_types))
        if recipe.transformer_asymmetric:
            recipe = replace(recipe, symmetric_activations=False)
        exclude += linears_after(model, set(recipe.float_linears_after))
    return _quantize_calibrated(fp32_path, out_path, batches, recipe, exclude=exclude,
                                model=model)


def _quantize_calibrated(fp32_path: Path, out_path: Path, batches: list[dict[str, np.ndarray]],
                         recipe: QuantRecipe, *, exclude: list[str], model) -> dict:
    import onnx

    ranges = calibrate(fp32_path, batches, recipe)
    _quantize_static(fp32_path, out_path, ranges, recipe, exclude=exclude, model=model)
    corrected = 0
    if recipe.bias_correction:
        stacked = stack_batches(batches[:128])
        shifts = bias_shifts(model, onnx.load(str(out_path)), stacked)
        corrected = shift_biases(model, shifts)
        if corrected:
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "corrected.onnx"
                onnx.save(model, str(src))
                _quantize_static(src, out_path, ranges, recipe, exclude=exclude, model=model)
    q = onnx.load(str(out_path))
    qdq = sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear")
    return {"calibrated_tensors": len(ranges), "calibration_batches": len(batches),
            "weight_bits": 7 if _reduce_range(recipe) else 8,
            "excluded_nodes": len(exclude), "quantize_linear_nodes": qdq,
            "bias_corrected_layers": corrected}


def _reduce_range(recipe: QuantRecipe) -> bool:
    return recipe.reduce_range_without_vnni and u8s8_saturates()


def u8s8_saturates() -> bool:
    """True on an x86 CPU without VNNI: there onnxruntime's u8s8 kernels add pairs of u8 x s8
    products in int16 (vpmaddubsw), which saturates with full 8-bit weights; onnxruntime's
    advice is 7-bit weights (reduce_range). False where the CPU's flags cannot be read."""
    return is_x86() and bool(cpu_flags()) and not has_vnni()


def _quantize_static(src: Path, out_path: Path, ranges: dict, recipe: QuantRecipe, *,
                     exclude: list[str], model) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    data = TensorsData(CalibrationMethod.MinMax, {
        n: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        for n, (lo, hi) in ranges.items()})
    act = QuantType.QInt8 if recipe.symmetric_activations else QuantType.QUInt8
    extra = {"ActivationSymmetric": recipe.symmetric_activations, "WeightSymmetric": True,
             "QuantizeBias": recipe.quantize_bias}
    # asymmetric uint8: over [0, hi] (zero-point 0) for non-negative tensors, over the
    # calibrated range for the model's inputs when the recipe keeps them asymmetric
    asym = set(unsigned_tensors(ranges, recipe, model))
    if recipe.symmetric_activations and recipe.asymmetric_inputs:
        asym |= {i.name for i in model.graph.input} & set(ranges)
    if asym:
        extra["TensorQuantOverrides"] = {
            n: [{"quant_type": QuantType.QUInt8, "symmetric": False}] for n in sorted(asym)}
    if recipe.float_outputs:
        outputs = {o.name for o in model.graph.output}
        extra["OpTypesToExcludeOutputQuantization"] = sorted(
            {n.op_type for n in model.graph.node if set(n.output) & outputs})
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "calibration.json"
        save_tensors_data(data, cache)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                quantize_static(
                    str(src), str(out_path), calibration_data_reader=None,
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(recipe.op_types),
                    per_channel=recipe.per_channel, activation_type=act,
                    weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                    reduce_range=_reduce_range(recipe),
                    extra_options=extra)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises many types
            raise TargetError(f"onnxruntime could not quantize the model: "
                              f"{str(e).splitlines()[0][:300]}") from e
