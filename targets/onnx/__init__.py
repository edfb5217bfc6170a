"""ONNX target: torch.onnx's dynamo exporter from the IR's program, run by onnxruntime.

Weights are inlined into model.onnx below 1.8 GB; above it they go to model.onnx.data,
which is part of the bundle. The dynamic batch dimension is named "batch".
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from layerwise.base.errors import TargetError
from layerwise.base.recipe import QuantRecipe
from layerwise.targets import TargetInfo

INFO = TargetInfo(name="onnx", runtime="onnx",
                  precisions=("fp32", "int8", "int8-dynamic", "int8-weight", "int4-weight",
                              "fp16"), extra=None,
                  legalize=("legalize_views", "legalize_copies", "unguard_softmax"),
                  # onnxruntime CPU: U8S8 (uint8 activations, int8 per-channel weights) in QDQ;
                  # range equalization full into depthwise convs, half into pointwise ones;
                  # 7-bit weights on x86 without VNNI (README: INT8 recipes)
                  recipe=QuantRecipe(equalize_depthwise=1.0, equalize_pointwise=0.5,
                                     reduce_range_without_vnni=True))
INLINE_LIMIT = int(1.8 * 2**30)


def emit(ir, out_dir: Path, opts=None) -> dict:
    """Write model.onnx (+ model.onnx.data when large) into out_dir; returns the model entry.
    An IR annotated by the `quantize` pass becomes that precision's model: static int8 is a
    QDQ model calibrated on ir.calibration; the others come from onnxruntime's tools."""
    plan = ir.annotations.get("quantize")
    if plan is None:
        return _emit_fp32(ir, out_dir)
    import tempfile

    from layerwise.base.recipe import recipe_from_plan
    from layerwise.compiler.passes.equalize import equalized
    from layerwise.targets.onnx.quantize import layer_nodes, quantize_model

    precision = plan.get("precision", "int8")
    recipe = recipe_from_plan(plan)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = _emit_fp32(ir, Path(tmp))
        if fp32["external_data"]:
            raise TargetError(f"{precision} of models over 1.8 GB is not supported yet; "
                              "use fp32")
        src = Path(tmp) / fp32["file"]
        if precision == "int8":
            info = quantize_model(src, out_dir / "model.onnx", ir.calibration, recipe,
                                  set(plan["keep_fp32"]))
            info["equalized_activations"] = equalized(ir)
        else:
            import onnx

            from layerwise.targets.onnx.precisions import convert

            exclude = layer_nodes(onnx.load(str(src)), set(plan["keep_fp32"]))
            info = convert(src, out_dir / "model.onnx", precision, recipe, exclude)
    return {**fp32, "files": ["model.onnx"], "precision": precision, "quantization": info}


def _emit_fp32(ir, out_dir: Path) -> dict:
    import onnx

    path = out_dir / "model.onnx"
    weight_bytes = sum(t.numel() * t.element_size() for t in ir.program.state_dict.values())
    external = weight_bytes > INLINE_LIMIT
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            torch.onnx.export(ir.program, (), f=str(path), dynamo=True, external_data=external,
                              output_names=list(ir.output_names), optimize=True, verbose=False)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TargetError(f"ONNX export failed: {msg}. Try --target openvino or tvm, or report "
                          "the op named above") from e
    model = onnx.load(str(path), load_external_data=False)
    batch_syms = _rename_batch_dim(model, ir)
    if batch_syms:
        save_onnx(model, path, external)
    files = [path.name] + (["model.onnx.data"] if (out_dir / "model.onnx.data").exists() else [])
    return {"file": path.name, "files": files, "format": "onnx",
            "opset": _opset(model), "external_data": external}


def save_onnx(model, path: Path, external: bool) -> None:
    """Write an onnx ModelProto to `path`; `external` puts the weights in `<name>.data`
    beside it (models past protobuf's 2 GB)."""
    import onnx

    if external:
        onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    else:
        onnx.save(model, str(path))


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _rename_batch_dim(model, ir) -> set[str]:
    """Name the symbolic batch dimension "batch" wherever it appears in the graph's shapes."""
    dynamic = set(ir.meta.get("dynamic_inputs", []))
    syms = {
        vi.type.tensor_type.shape.dim[0].dim_param
        for vi in model.graph.input
        if vi.name in dynamic and vi.type.tensor_type.shape.dim
        and vi.type.tensor_type.shape.dim[0].dim_param
    }
    if not syms:
        return syms
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in syms:
                dim.dim_param = "batch"
    return syms
