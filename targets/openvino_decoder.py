"""A causal LM as a stateful OpenVINO model, the form OpenVINO GenAI runs: the onnx step graph
(targets/onnx/decoder.py) read by OpenVINO, its cache moved into state variables
(`apply_make_stateful_transformation`: past input -> present output pairs become
ReadValue/Assign), with each state starting as zeros of the batch `input_ids` has. Inputs
are then only `input_ids` and `attention_mask` (past + new tokens); a new generation starts
with `reset_state()`. Weight precisions come from NNCF's weight compression (the vendor's
tool for its runtime): int8-weight (INT8_SYM per channel), int4-weight (INT4_SYM, groups of
the onnx recipe's block size), and int4-mixed (int4, with the blocks named by the plan at
int8)."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np

from layerwise.base.errors import TargetError

PRECISIONS = ("fp32", "int8-weight", "int4-weight", "int4-mixed")


def emit_ov_decoder(model, out_dir: Path, precision: str, *, group_size: int = 128,
                    int8_blocks: tuple[int, ...] = ()) -> dict:
    """Write model.xml + model.bin (stateful) into out_dir; returns the model entry."""
    try:
        import openvino as ov
    except ImportError as e:
        raise TargetError("OpenVINO is not installed: pip install 'layerwise[openvino]'") from e
    from layerwise.compiler.decoder import cache_shape
    from layerwise.targets.onnx.decoder import emit_decoder

    if precision not in PRECISIONS:
        raise TargetError(f"a text-generation bundle for openvino takes --precision "
                          f"{', '.join(PRECISIONS)}, not {precision!r}")
    layers = cache_shape(model.config)[0]
    with tempfile.TemporaryDirectory() as tmp:
        emit_decoder(model, Path(tmp), "fp32", None)
        ov_model = ov.Core().read_model(str(Path(tmp) / "model.onnx"))
        make_stateful(ov_model, layers)
        info = None
        if precision != "fp32":
            info = compress(ov_model, precision, group_size, int8_blocks)
        ov.save_model(ov_model, str(out_dir / "model.xml"), compress_to_fp16=False)
    return {"file": "model.xml", "files": ["model.xml", "model.bin"], "format": "openvino",
            "stateful": True, "precision": precision, "quantization": info}


def make_stateful(ov_model, layers: int) -> None:
    """Move the KV cache into state variables that start as zeros of the input's batch."""
    import openvino.opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    pairs = {f"past_key_values.{i}.{k}": f"present.{i}.{k}"
             for i in range(layers) for k in ("key", "value")}
    apply_make_stateful_transformation(ov_model, pairs)
    ids = ov_model.input("input_ids")
    batch = ops.gather(ops.shape_of(ids, output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [d.min_length for d in op.get_output_partial_shape(0)]
            parts = [batch if i == 0 else ops.constant(np.array([d], np.int64))
                     for i, d in enumerate(dims)]
            zero = ops.constant(np.zeros((), np.float32))
            op.set_arguments([ops.broadcast(zero, ops.concat(parts, 0))])
    ov_model.validate_nodes_and_infer_types()


def compress(ov_model, precision: str, group_size: int, int8_blocks: tuple[int, ...]) -> dict:
    """NNCF weight compression in place; int4-mixed keeps the blocks `int8_blocks` at int8."""
    try:
        import nncf
    except ImportError as e:
        raise TargetError("int4/int8 weights for openvino need NNCF: pip install "
                          "'layerwise[openvino]'") from e
    logging.getLogger("nncf").setLevel(logging.WARNING)
    mode = nncf.CompressWeightsMode
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        if precision == "int8-weight":
            nncf.compress_weights(ov_model, mode=mode.INT8_SYM)
            return {"tool": "nncf.compress_weights", "mode": "INT8_SYM"}
        scope = None
        if precision == "int4-mixed" and int8_blocks:
            patterns = [rf"^layers\.{i}/.*" for i in int8_blocks]
            scope = nncf.IgnoredScope(patterns=patterns, validate=False)
        nncf.compress_weights(ov_model, mode=mode.INT4_SYM, group_size=group_size, ratio=1.0,
                              ignored_scope=scope, all_layers=True)
        if scope is not None:  # the sensitive blocks, left out above, at int8
            nncf.compress_weights(ov_model, mode=mode.INT8_SYM)
    return {"tool": "nncf.compress_weights", "mode": "INT4_SYM", "group_size": group_size,
            "int8_blocks": list(int8_blocks)}
