"""OpenVINO target: OpenVINO's converter reads the IR's ExportedProgram directly into
OpenVINO IR (model.xml + model.bin, fp32 weights), run by the OpenVINO CPU runtime.

Verification pins INFERENCE_PRECISION_HINT=f32: on CPUs with bf16 support OpenVINO would
otherwise run bf16 and miss an fp32 tolerance.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from layerwise.errors import TargetError
from layerwise.targets import TargetInfo

INFO = TargetInfo(name="openvino", runtime="openvino", precisions=("fp32", "bf16"),
                  extra="openvino")


def emit(ir, out_dir: Path, opts=None) -> dict:
    """Write model.xml + model.bin; input shapes follow the IR (batch dynamic where it is)."""
    try:
        import openvino as ov
    except ImportError as e:
        raise TargetError("the openvino target needs OpenVINO: pip install 'layerwise[openvino]'") from e
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            model = ov.convert_model(ir.program)
    except Exception as e:  # noqa: BLE001 - the converter raises its own types
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TargetError(f"OpenVINO cannot convert the model: {msg}. Try --target onnx") from e
    shapes = {}
    for spec in ir.input_specs():
        dims = [-1 if isinstance(d, str) else d for d in spec["shape"]]
        shapes[spec["name"]] = ov.PartialShape(dims)
    names = {p.get_any_name() for p in model.inputs}
    if set(shapes) != names:
        raise TargetError(f"OpenVINO model inputs {sorted(names)} differ from the IR's "
                          f"{sorted(shapes)}; try --target onnx")
    model.reshape(shapes)
    for out, name in zip(model.outputs, ir.output_names):
        out.get_tensor().set_names({name})
    ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=False)
    return {"file": "model.xml", "files": ["model.xml", "model.bin"], "format": "openvino-ir",
            "openvino": ov.get_version()}
