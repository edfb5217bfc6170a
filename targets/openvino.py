"""OpenVINO target: OpenVINO's converter reads the IR's ExportedProgram directly into
OpenVINO IR (model.xml + model.bin, fp32 weights), run by the OpenVINO CPU runtime.

INT8 of a CNN: the ONNX target's QDQ model (layerwise's calibration, range equalization,
bias correction and per-layer fp32 choice, under the openvino recipe) goes through
OpenVINO's ONNX frontend, which turns each QuantizeLinear/DequantizeLinear pair into a
FakeQuantize; the CPU plugin runs the quantized ops with its int8 kernels. INT8 of a model
with attention (a Softmax), under the recipe's transformer_quantizer "nncf": the fp32 ONNX
model converted by OpenVINO and quantized by NNCF's transformer model type (SmoothQuant,
int8 attention, every linear int8), the layers kept in fp32 as NNCF's ignored scope — the
vendor's quantizer gives its own runtime the faster graph there (README: INT8 recipes).

Verification pins INFERENCE_PRECISION_HINT=f32: on CPUs with bf16 support OpenVINO would
otherwise run bf16 and miss an fp32 tolerance.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from layerwise.base.errors import TargetError
from layerwise.base.recipe import QuantRecipe
from layerwise.targets import TargetInfo

# OpenVINO CPU reads our QDQ ONNX: asymmetric uint8 activations as onnxruntime; the
# zero-point-0 variant (symmetric_activations, unsigned_nonnegative, asymmetric_inputs) is a
# recipe option (README: INT8 recipes)
INFO = TargetInfo(name="openvino", runtime="openvino", precisions=("fp32", "bf16", "int8"),
                  extra="openvino", legalize=("unguard_softmax",),
                  recipe=QuantRecipe(equalize_depthwise=1.0, equalize_pointwise=0.5,
                                     transformer_quantizer="nncf"))


def emit(ir, out_dir: Path, opts=None) -> dict:
    """Write model.xml + model.bin; input shapes follow the IR (batch dynamic where it is)."""
    try:
        import openvino as ov
    except ImportError as e:
        raise TargetError("the openvino target needs OpenVINO: "
                          "pip install 'layerwise[openvino]'") from e
    plan = ir.annotations.get("quantize")
    if plan is not None and plan.get("precision") != "int8":
        raise TargetError(f"the openvino target emits fp32, bf16 or int8, not "
                          f"{plan.get('precision')}; try --target onnx")
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            model, info = _convert(ir, plan, ov)
    except TargetError:
        raise
    except Exception as e:  # noqa: BLE001 - the converter raises its own types
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TargetError(f"OpenVINO cannot convert the model: {msg}. Try --target onnx") from e
    shapes = {}
    for spec in ir.input_specs():
        dims = [-1 if isinstance(d, str) else d for d in spec["shape"]]
        shapes[spec["name"]] = ov.PartialShape(dims)
    if len(model.inputs) != len(shapes):
        names = [p.get_any_name() for p in model.inputs]
        raise TargetError(f"OpenVINO model inputs {names} differ from the IR's "
                          f"{list(shapes)}; try --target onnx")
    for port, name in zip(model.inputs, shapes):
        # the ExportedProgram's user inputs, in order: the frontend may add the names of the
        # nodes that read an input ({'49', 'slice_1:0', 'input_values'} for Wav2Vec2), and
        # get_any_name() would then give '49'
        if port.get_names() != {name}:
            port.get_tensor().set_names({name})
    model.reshape(shapes)
    for out, name in zip(model.outputs, ir.output_names):
        out.get_tensor().set_names({name})
    ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=False)
    entry = {"file": "model.xml", "files": ["model.xml", "model.bin"], "format": "openvino-ir",
             "openvino": ov.get_version()}
    if info is not None:
        fq = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        entry.update(precision="int8", quantization={**info, "fake_quantize_nodes": fq})
    return entry


def _convert(ir, plan, ov):
    """fp32: the ExportedProgram; int8: the ONNX target's QDQ model under this recipe."""
    if plan is None:
        return ov.convert_model(ir.program), None
    import tempfile

    from layerwise.compiler.passes import run_passes
    from layerwise.targets import onnx as onnx_target

    # what the ONNX exporter needs beyond this target's own legalizations (already run)
    ir = run_passes(ir, [p for p in onnx_target.INFO.legalize if p not in INFO.legalize])
    with tempfile.TemporaryDirectory() as tmp:
        if plan["recipe"].get("transformer_quantizer") == "nncf" and _has_attention(ir):
            return _nncf_int8(ir, plan, ov, onnx_target, Path(tmp))
        entry = onnx_target.emit(ir, Path(tmp))
        model = ov.convert_model(str(Path(tmp) / entry["file"]))
    return model, entry["quantization"]


def _has_attention(ir) -> bool:
    import torch

    aten = torch.ops.aten
    return any(n.target in (aten._softmax.default, aten.softmax.int)
               for n in ir.program.graph.nodes)


def _nncf_int8(ir, plan, ov, onnx_target, tmp: Path):
    """(NNCF's int8 model of the IR's fp32 ONNX export, what was done)."""
    import dataclasses
    import logging
    import re
    import time

    import onnx

    try:
        import nncf
    except ImportError as e:
        raise TargetError("int8 of a transformer for OpenVINO needs NNCF: pip install "
                          "'layerwise[openvino]'") from e
    from layerwise.targets.onnx.quantize import layer_nodes

    if not ir.calibration:
        raise TargetError("INT8 needs calibration data: pass --data with a few hundred inputs")
    fp32 = dataclasses.replace(ir, annotations={k: v for k, v in ir.annotations.items()
                                                if k != "quantize"})
    entry = onnx_target.emit(fp32, tmp)
    path = tmp / entry["file"]
    model = ov.convert_model(str(path))
    keep = layer_nodes(onnx.load(str(path), load_external_data=False), set(plan["keep_fp32"]))
    # OpenVINO's ONNX frontend names a Gemm's MatMul "<node>/WithoutBiases"
    ignored = nncf.IgnoredScope(patterns=[rf"^{re.escape(n)}(/WithoutBiases)?$" for n in keep],
                                validate=False) if keep else None
    logging.getLogger("nncf").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(list(ir.calibration)),
                              subset_size=len(ir.calibration),
                              model_type=nncf.ModelType.TRANSFORMER, ignored_scope=ignored)
    return quantized, {"quantizer": f"nncf {nncf.__version__}", "model_type": "transformer",
                       "calibration_examples": len(ir.calibration),
                       "excluded_nodes": len(keep), "seconds": time.perf_counter() - t0}
