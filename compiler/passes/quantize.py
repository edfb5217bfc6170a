"""`quantize`: choose the INT8 recipe and the layers that stay in fp32 (mixed precision).

The pass only annotates the IR; each target turns the annotation into its own quantized
artifact (the ONNX target: QDQ from layerwise's calibration). The recipe comes from the
target (and later the device profile), never from flags spread through the code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from layerwise.errors import LayerwiseError


@dataclass(frozen=True)
class QuantRecipe:
    """How a backend wants INT8: activation symmetry, granularity, calibration, which ops."""

    symmetric_activations: bool = False  # int8 zero-point 0 (TensorRT) or uint8 asymmetric
    per_channel: bool = True  # per-output-channel symmetric int8 weights
    calibration: str = "mse"  # minmax | percentile | entropy | mse
    percentile: float = 99.999
    bins: int = 2048
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    weighted_matmuls_only: bool = True  # leave activation x activation matmuls in float
    quantize_bias: bool = True  # int32 bias (onnxruntime) or float bias (TensorRT)


# One row per target: what its INT8 kernels expect.
RECIPES: dict[str, QuantRecipe] = {
    # onnxruntime CPU: U8S8 (uint8 activations, int8 per-channel weights), QDQ
    "onnx": QuantRecipe(),
    # TensorRT: symmetric int8 everywhere, entropy calibration (its own default)
    # (MSE is the onnxruntime default: on MobileNetV2 it beats minmax and percentile, see
    # bench/compress.py)
    "tensorrt": QuantRecipe(symmetric_activations=True, calibration="entropy",
                            quantize_bias=False),
    # OpenVINO CPU: uint8 activations, int8 per-channel weights
    "openvino": QuantRecipe(),
    # LiteRT full-integer: int8 asymmetric activations, per-channel int8 weights; percentile
    # 99.99 measured best on MobileNetV2 (tests/targets/test_tflite.py)
    "tflite": QuantRecipe(calibration="percentile", percentile=99.99),
}


def recipe_for(target: str, **overrides) -> QuantRecipe:
    """The target's recipe with user overrides (e.g. calibration='entropy')."""
    if target not in RECIPES:
        raise LayerwiseError(f"no INT8 recipe for target {target!r}; targets with one: "
                             f"{', '.join(sorted(RECIPES))}")
    return replace(RECIPES[target], **{k: v for k, v in overrides.items() if v is not None})


def quantize(ir, recipe: QuantRecipe, keep_fp32: list[str] | tuple[str, ...] = ()):
    """Annotate `ir` (in place; returns it) for static INT8 with `recipe`; the layers in
    `keep_fp32` (layer-table paths) stay in floating point."""
    known = {layer.path for layer in ir.layers}
    unknown = [p for p in keep_fp32 if p not in known]
    if unknown:
        raise LayerwiseError(f"cannot keep unknown layers in fp32: {unknown}; see `layerwise "
                             "inspect` for layer paths")
    ir.annotations["quantize"] = {"precision": "int8", "recipe": asdict(recipe),
                                  "keep_fp32": list(keep_fp32)}
    ir.annotations.setdefault("passes", []).append(
        {"name": "quantize", "precision": "int8", "keep_fp32": len(keep_fp32)})
    return ir
