"""A causal LM as an onnx generator: one step graph with its KV cache as inputs and outputs
(`compiler/decoder.py`), named as onnxruntime-genai names them, at fp32 or one of
onnxruntime's weight precisions (int4-weight: MatMulNBits, int8-weight, int8-dynamic, fp16).

Dimension names: `batch`, `sequence` (new tokens), `past_sequence` (cached tokens) and
`total_sequence` (the attention mask: past + new)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import torch

from layerwise.base.errors import TargetError

PRECISIONS = ("fp32", "int8-dynamic", "int8-weight", "int4-weight", "fp16")


def emit_decoder(model: torch.nn.Module, out_dir: Path, precision: str, recipe) -> dict:
    """Write model.onnx (the step graph at `precision`) into out_dir; returns the model
    entry. Assumes `model` is an eval-mode transformers causal LM with eager attention."""
    import onnx

    from layerwise.compiler.decoder import cache_shape, example_step, export_step, io_names

    if precision not in PRECISIONS:
        raise TargetError(f"a text-generation bundle for onnx takes --precision "
                          f"{', '.join(PRECISIONS)}, not {precision!r}")
    layers = cache_shape(model.config)[0]
    inputs, outputs = io_names(layers)
    example = example_step(model.config)
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                program = export_step(model, example)
                torch.onnx.export(program, example, str(fp32), dynamo=True, external_data=False,
                                  input_names=inputs, output_names=outputs, optimize=True,
                                  verbose=False)
        except Exception as e:
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise TargetError(f"exporting the decoder step failed: {msg}") from e
        graph = onnx.load(str(fp32))
        name_dims(graph, layers)
        name_layers(graph)
        onnx.save(graph, str(fp32))
        quant = None
        if precision == "fp32":
            (out_dir / "model.onnx").write_bytes(fp32.read_bytes())
        else:
            from layerwise.targets.onnx.precisions import convert

            quant = convert(fp32, out_dir / "model.onnx", precision, recipe, [])
    return {"file": "model.onnx", "files": ["model.onnx"], "format": "onnx",
            "opset": next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
                          0),
            "external_data": False, "precision": precision, "quantization": quant}


def name_dims(graph, layers: int) -> None:
    """Give the exporter's symbols the names above, wherever they appear (in place)."""
    dims = {}
    ins = {i.name: i for i in graph.graph.input}
    for name, axis, label in [("input_ids", 0, "batch"), ("input_ids", 1, "sequence"),
                              ("attention_mask", 1, "total_sequence")] + [
            (f"past_key_values.{i}.{k}", 2, "past_sequence")
            for i in range(layers) for k in ("key", "value")]:
        sym = ins[name].type.tensor_type.shape.dim[axis].dim_param
        if sym:
            dims[sym] = label
    for vi in [*graph.graph.input, *graph.graph.output, *graph.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in dims:
                d.dim_param = dims[d.dim_param]
            elif d.dim_param:  # sums of symbols: the present cache is past + new
                parts = sorted(dims.get(p.strip(), p.strip()) for p in d.dim_param.split("+"))
                if parts == ["past_sequence", "sequence"]:
                    d.dim_param = "total_sequence"


def name_layers(graph) -> int:
    """Prefix each node that belongs to decoder block N with `layers.N/` (from the exporter's
    name scopes), so a profile can sum the time per block; returns how many were named."""
    import ast
    import re

    pattern = re.compile(r"\.(?:layers|h)\.(\d+)$")
    named = 0
    for node in graph.graph.node:
        scopes = next((p.value for p in node.metadata_props
                       if p.key == "pkg.torch.onnx.name_scopes"), None)
        try:
            scopes = ast.literal_eval(scopes) if scopes else []
        except (ValueError, SyntaxError):
            scopes = []
        found = [m.group(1) for s in scopes if isinstance(s, str) and (m := pattern.search(s))]
        if found:
            node.name = f"layers.{found[-1]}/{node.name}"
            named += 1
    return named
