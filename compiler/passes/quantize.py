"""`quantize`: choose the recipe for a precision and the layers that stay in fp32.

The pass only annotates the IR; each target turns the annotation into its own artifact (the
ONNX target: QDQ from layerwise's calibration for static int8, onnxruntime's dynamic and
weight-only quantizers, fp16 conversion). The recipe (layerwise.base.recipe) comes from the
target's INFO (and the device profile, which overrides fields), never from flags spread
through the code.

Precisions: "int8" (static: calibrated activations and weights), "int8-dynamic" (int8
weights, activations quantized at run time, for transformer linears), "int8-weight" and
"int4-weight" (weight-only linears, dequantized in the kernel), "fp16".
"""

from __future__ import annotations

from dataclasses import asdict

from layerwise.base.errors import LayerwiseError
from layerwise.base.recipe import PRECISION_DEFAULTS, QuantRecipe


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
