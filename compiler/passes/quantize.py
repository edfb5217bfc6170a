"""`quantize`: choose the recipe for a precision and the layers that stay in fp32.

The pass only annotates the IR; each target turns the annotation into its own artifact (the
ONNX target: QDQ from layerwise's calibration for static int8, onnxruntime's dynamic and
weight-only quantizers, fp16 conversion). The recipe comes from the target (and the device
profile, which overrides fields), never from flags spread through the code.

Precisions: "int8" (static: calibrated activations and weights), "int8-dynamic" (int8
weights, activations quantized at run time, for transformer linears), "int8-weight" and
"int4-weight" (weight-only linears, dequantized in the kernel), "fp16".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from layerwise.errors import LayerwiseError

LOSSY = ("int8", "int8-dynamic", "int8-weight", "int4-weight", "fp16")


@dataclass(frozen=True)
class QuantRecipe:
    """How a backend wants a precision: activation symmetry, granularity, calibration, which
    ops; the weight-only fields (weight_bits, block_size) apply to int8/int4-weight."""

    symmetric_activations: bool = False  # int8 zero-point 0 (TensorRT) or uint8 asymmetric
    # with symmetric activations: a tensor calibrated non-negative (ReLU, ReLU6 outputs) is
    # uint8 with zero-point 0 instead of int8, so it keeps all 8 bits (OpenVINO's CPU kernels
    # take u8 or i8 without zero-point compensation; NNCF's performance preset does the same)
    unsigned_nonnegative: bool = False
    # with symmetric activations: the model's float inputs stay asymmetric uint8 (images are
    # skewed; only the first layer pays the zero-point compensation)
    asymmetric_inputs: bool = False
    per_channel: bool = True  # per-output-channel symmetric int8 weights
    # minmax | mean_minmax (NNCF's default: mean over inputs of each one's extremes) |
    # percentile | entropy | mse; mean_minmax measured best on MobileNetV2 and MiniLM
    calibration: str = "mean_minmax"
    percentile: float = 99.999
    bins: int = 2048
    # static int8: every op onnxruntime has an int8 kernel for, so int8 tensors flow from one
    # kernel to the next (Conv/Clip/Add/pooling fuse into QLinear* ops); a float op between
    # two int8 ops costs a dequantize/quantize pair and blocks the fusion
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm", "Add", "Mul", "Clip", "Relu",
                                 "MaxPool", "AveragePool", "GlobalAveragePool", "Concat",
                                 "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                                 "Resize", "Pad", "Split")
    weighted_matmuls_only: bool = True  # leave activation x activation matmuls in float
    # models with attention (a Softmax): only the weighted linears get Q/DQ (residual adds,
    # layer norms and softmax stay float, as NNCF's transformer model type), and linears fed
    # by these ops stay float (GELU's long-tailed outputs: per-tensor int8 on MiniLM's
    # FFN down-projections costs 4.5% cosine, see bench/compress.py)
    transformer_op_types: tuple[str, ...] = ("Gemm", "MatMul")
    # models with attention: asymmetric uint8 activations whatever symmetric_activations says
    # (NNCF's mixed preset for transformers; MiniLM on OpenVINO: cosine 0.9944 to fp32
    # against 0.9909 symmetric)
    transformer_asymmetric: bool = False
    float_linears_after: tuple[str, ...] = ("Gelu",)
    quantize_bias: bool = True  # int32 bias (onnxruntime) or float bias (TensorRT)
    bias_correction: bool = True  # shift biases by the mean error each layer's int8 adds
    # cross-layer range equalization of the activations between two convs (Conv -> ReLU(6) ->
    # Conv, targets/onnx_equalize.py), needs per-channel weights: channel c scales by
    # (range / range_c) ** exponent, the exponent by the consuming conv (depthwise: free,
    # pointwise: moves error into its weights), at most max_scale; 0 leaves them
    equalize_depthwise: float = 0.0
    equalize_pointwise: float = 0.0
    equalize_max_scale: float = 16.0
    float_outputs: bool = True  # the model's outputs stay float (no Q/DQ on the logits)
    # 7-bit weights where the host's int8 kernels saturate (x86 without VNNI: onnxruntime's
    # u8s8 GEMM sums u8 x s8 pairs in int16); only for artifacts onnxruntime runs here
    reduce_range_without_vnni: bool = False
    weight_bits: int = 8  # weight-only precisions: 8 or 4
    block_size: int = 128  # weight-only: weights per scale along the input dimension


# One row per target: what its static INT8 kernels expect.
RECIPES: dict[str, QuantRecipe] = {
    # onnxruntime CPU: U8S8 (uint8 activations, int8 per-channel weights), QDQ. Range
    # equalization, full into depthwise convs and half into pointwise ones, measured on
    # MobileNetV2 (100 calibration photos, 1200 crops apart from bench/compress.py's): mean
    # KL to fp32 0.050 -> 0.029 (pointwise 0: 0.030, 0.75: 0.042; max scale 8 to 32 alike)
    # On x86 without VNNI the weights take 7 bits (MobileNetV2, 32 photos, rel_err of the
    # optimized session: 0.337 at 8 bits, 0.133 at 7; 0.104 at 8 bits unfused)
    "onnx": QuantRecipe(equalize_depthwise=1.0, equalize_pointwise=0.5,
                        reduce_range_without_vnni=True),
    # TensorRT: symmetric int8 everywhere; TensorRT fuses its own activations, so only the
    # weighted ops get Q/DQ. Calibration: mean_minmax, measured on MobileNetV2 against the
    # fp32 IR (rel_err 0.14; entropy, TensorRT's own calibrator's method, 0.75; minmax 0.36;
    # mse 0.26; percentile 0.39)
    "tensorrt": QuantRecipe(symmetric_activations=True, calibration="mean_minmax",
                            quantize_bias=False, bias_correction=False,
                            op_types=("Conv", "MatMul", "Gemm")),
    # OpenVINO CPU: reads the onnx QDQ model; asymmetric uint8 activations as onnxruntime.
    # bench/compress.py, MobileNetV2, 300 photos (all / confident agreement with fp32, time
    # against NNCF's model paired by round, our runtime compiling each input shape static):
    # asymmetric 0.907 / 0.992 at 0.85x NNCF's time as saved (dynamic batch), 1.05x NNCF's
    # reshaped static by hand; zero-point-0 (uint8 where non-negative, int8 where signed,
    # the image asymmetric: symmetric_activations, unsigned_nonnegative, asymmetric_inputs)
    # 0.870 / 0.992 at 0.78x (0.90x); NNCF 0.873 / 0.977. Asymmetric costs OpenVINO a
    # zero-point compensation in every conv fed by a signed tensor, and keeps the accuracy.
    "openvino": QuantRecipe(equalize_depthwise=1.0, equalize_pointwise=0.5),
    # LiteRT full-integer: int8 asymmetric activations, per-channel int8 weights, bias
    # correction, float logits. MobileNetV2 top-1 agreement with fp32 on 300 held-out photo
    # crops (64 to calibrate), all / confident: mean_minmax 0.903 / 1.000, percentile 99.99
    # 0.867 / 0.986, minmax 0.817 / 0.964, mse 0.810 / 0.986, entropy 0.463 / 0.633. Range
    # equalization on the IR (targets/tflite_equalize.py), bench/targets.py's 200 held-out
    # crops (89 confident), mean logit cosine / confident agreement: none 0.9884 / 0.977,
    # depthwise 1 + pointwise 0.5 0.9938 / 1.000, pointwise 0 0.9933 / 0.977, 1 0.9896 / 0.989
    "tflite": QuantRecipe(calibration="mean_minmax", equalize_depthwise=1.0,
                          equalize_pointwise=0.5),
}

# What changes from a target's static int8 recipe for the other precisions.
PRECISION_DEFAULTS: dict[str, dict] = {
    "int8": {},
    # onnxruntime's dynamic quantization: linears only (MatMul with a weight)
    "int8-dynamic": {"op_types": ("MatMul",)},
    # MatMulNBits (linears) and GatherBlockQuantized (embedding tables): block-wise
    # symmetric weights; 4 bits need small blocks to keep accuracy
    "int8-weight": {"op_types": ("MatMul", "Gather"), "weight_bits": 8, "block_size": 128},
    "int4-weight": {"op_types": ("MatMul", "Gather"), "weight_bits": 4, "block_size": 32},
    "fp16": {},
}


def recipe_for(target: str, precision: str = "int8", **overrides) -> QuantRecipe:
    """The target's recipe for `precision` with user overrides (e.g. calibration='entropy')."""
    if target not in RECIPES:
        raise LayerwiseError(f"no quantization recipe for target {target!r}; targets with one: "
                             f"{', '.join(sorted(RECIPES))}")
    if precision not in PRECISION_DEFAULTS:
        raise LayerwiseError(f"unknown precision {precision!r}; use fp32 or one of "
                             f"{', '.join(PRECISION_DEFAULTS)}")
    base = replace(RECIPES[target], **PRECISION_DEFAULTS[precision])
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def quantize(ir, recipe: QuantRecipe, keep_fp32: list[str] | tuple[str, ...] = (),
             precision: str = "int8"):
    """Annotate `ir` (in place; returns it) for `precision` with `recipe`; the layers in
    `keep_fp32` (layer-table paths) stay in floating point."""
    if precision not in PRECISION_DEFAULTS:
        raise LayerwiseError(f"unknown precision {precision!r}; use one of "
                             f"{', '.join(PRECISION_DEFAULTS)}")
    known = {layer.path for layer in ir.layers}
    unknown = [p for p in keep_fp32 if p not in known]
    if unknown:
        raise LayerwiseError(f"cannot keep unknown layers in fp32: {unknown}; see `layerwise "
                             "inspect` for layer paths")
    ir.annotations["quantize"] = {"precision": precision, "recipe": asdict(recipe),
                                  "keep_fp32": list(keep_fp32)}
    ir.annotations.setdefault("passes", []).append(
        {"name": "quantize", "precision": precision, "keep_fp32": len(keep_fp32)})
    return ir


def recipe_from_plan(plan: dict) -> QuantRecipe:
    """The QuantRecipe stored by `quantize` in ir.annotations["quantize"]."""
    fields = {k: v for k, v in plan["recipe"].items() if k in QuantRecipe.__dataclass_fields__}
    return QuantRecipe(**{**fields, "op_types": tuple(fields.get("op_types", ()))})
