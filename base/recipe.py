"""The quantization recipe format: how a backend wants a precision. Plain data shared by the
compiler's `quantize` pass (which stores it in the IR), the targets (each declares its own
recipe) and the device profiles (which override fields). Standard library only."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from layerwise.base.errors import LayerwiseError

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
    # percentile | entropy | mse; the default, as one outlier input does not stretch the range
    # (README: INT8 recipes)
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
    # by these ops stay float (GELU's outputs are long-tailed, so one per-tensor int8 scale
    # leaves the bulk of them few levels; README: INT8 recipes)
    transformer_op_types: tuple[str, ...] = ("Gemm", "MatMul")
    # models with attention: asymmetric uint8 activations whatever symmetric_activations says
    # (NNCF's mixed preset for transformers; closer to fp32 than symmetric, README: INT8 recipes)
    transformer_asymmetric: bool = False
    float_linears_after: tuple[str, ...] = ("Gelu",)
    # models with attention: "layerwise" (the QDQ recipe above) or "nncf" (NNCF's transformer
    # model type: SmoothQuant, int8 attention; OpenVINO only, which runs its graphs fastest,
    # README: INT8 recipes)
    transformer_quantizer: str = "layerwise"
    quantize_bias: bool = True  # int32 bias (onnxruntime) or float bias (TensorRT)
    bias_correction: bool = True  # shift biases by the mean error each layer's int8 adds
    # cross-layer range equalization of the activations between two convs (Conv -> ReLU(6) ->
    # Conv, the compiler's `equalize` pass), needs per-channel weights: channel c scales by
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
    # weight-only: MatMulNBits' compute type (0 the runtime's default, 1 fp32, 2 fp16,
    # 3 bf16, 4 int8 activations per block: the integer dot-product kernels)
    accuracy_level: int = 0


# What changes from a target's static int8 recipe for the other precisions.
PRECISION_DEFAULTS: dict[str, dict] = {
    "int8": {},
    # onnxruntime's dynamic quantization: linears only (MatMul with a weight)
    "int8-dynamic": {"op_types": ("MatMul",)},
    # MatMulNBits (linears) and GatherBlockQuantized (embedding tables): block-wise
    # symmetric weights; 4 bits need small blocks to keep accuracy
    # int8-weight computes in fp32 (weights are the only loss); int4 in int8, as
    # onnxruntime-genai builds its int4 models
    "int8-weight": {"op_types": ("MatMul", "Gather"), "weight_bits": 8, "block_size": 128},
    "int4-weight": {"op_types": ("MatMul", "Gather"), "weight_bits": 4, "block_size": 32,
                    "accuracy_level": 4},
    "fp16": {},
}


def recipe_keys() -> tuple[str, ...]:
    """The fields a device profile's [quant] table may override."""
    return tuple(f.name for f in fields(QuantRecipe))


def for_precision(recipe: QuantRecipe, precision: str, **overrides) -> QuantRecipe:
    """A target's static int8 `recipe` moved to `precision`, with user overrides on top
    (None values are left out)."""
    if precision not in PRECISION_DEFAULTS:
        raise LayerwiseError(f"unknown precision {precision!r}; use fp32 or one of "
                             f"{', '.join(PRECISION_DEFAULTS)}")
    moved = replace(recipe, **PRECISION_DEFAULTS[precision])
    return replace(moved, **{k: v for k, v in overrides.items() if v is not None})


def recipe_from_plan(plan: dict) -> QuantRecipe:
    """The QuantRecipe stored by the `quantize` pass in ir.annotations["quantize"]."""
    known = {k: v for k, v in plan["recipe"].items() if k in QuantRecipe.__dataclass_fields__}
    return QuantRecipe(**{**known, "op_types": tuple(known.get("op_types", ()))})
