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

import numpy as np
import torch

from layerwise.base.errors import TargetError
from layerwise.targets.onnx import INLINE_LIMIT, save_onnx

PRECISIONS = ("fp32", "int8-dynamic", "int8-weight", "int4-weight", "int4-mixed", "fp16")


def emit_decoder(model: torch.nn.Module, out_dir: Path, precision: str, recipe, *,
                 int8_blocks: tuple[int, ...] = (), opset: int | None = None,
                 writer: str = "export") -> dict:
    """Write model.onnx (the step graph at `precision`) into out_dir; returns the model
    entry. int4-mixed: int4 weights except the decoder blocks `int8_blocks`, whose linears
    get 8 bits. Assumes `model` is an eval-mode transformers causal LM with eager
    attention. `writer`: "export" (torch.export: any decoder, standard onnx ops), "builder"
    (onnxruntime-genai's fused graph, targets/onnx/genai_graph.py) or "auto" (the builder
    where it knows the architecture)."""
    import onnx

    from layerwise.compiler.decoder import cache_shape
    from layerwise.targets.onnx.genai_graph import build_step, builds
    from layerwise.targets.onnx.genai_graph import name_layers as genai_name_layers

    if precision not in PRECISIONS:
        raise TargetError(f"a text-generation bundle for onnx takes --precision "
                          f"{', '.join(PRECISIONS)}, not {precision!r}")
    layers = cache_shape(model.config)[0]
    use_builder = writer == "builder" or (writer == "auto" and builds(model))
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > INLINE_LIMIT
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        if use_builder:
            build_step(model, Path(tmp))
            graph = onnx.load(str(fp32))
            genai_name_layers(graph, layers)
        else:
            _export(model, fp32, layers, external, opset)
            graph = onnx.load(str(fp32))
            name_layers(graph)
        name_dims(graph, layers)
        fold_weight_transposes(graph)
        opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), 0)
        quant = None
        if precision == "fp32":
            save_onnx(graph, out_dir / "model.onnx", external)
        else:
            save_onnx(graph, fp32, external)
            del graph
            quant = _lower(fp32, out_dir / "model.onnx", precision, recipe, int8_blocks)
    files = ["model.onnx"] + (["model.onnx.data"] if (out_dir / "model.onnx.data").exists()
                              else [])
    return {"file": "model.onnx", "files": files, "format": "onnx", "opset": opset,
            "external_data": len(files) > 1, "precision": precision, "quantization": quant,
            "graph": _graph_source(use_builder)}


def _export(model, path: Path, layers: int, external: bool, opset: int | None) -> None:
    """torch.export of the step (compiler/decoder.py) and the dynamo onnx exporter."""
    from layerwise.compiler.decoder import example_step, export_step, io_names

    inputs, outputs = io_names(layers)
    example = example_step(model.config)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            program = export_step(model, example)
            torch.onnx.export(program, example, str(path), dynamo=True,
                              external_data=external, input_names=inputs,
                              output_names=outputs, optimize=True, verbose=False,
                              opset_version=opset)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TargetError(f"exporting the decoder step failed: {msg}") from e


def _graph_source(builder: bool) -> dict:
    """Which tool wrote the step graph, with its version."""
    from importlib.metadata import PackageNotFoundError, version

    if not builder:
        return {"writer": "torch.export", "version": torch.__version__}
    try:
        v = version("onnxruntime-genai")
    except PackageNotFoundError:
        v = None
    return {"writer": "onnxruntime-genai model builder", "version": v}


def _lower(fp32: Path, out: Path, precision: str, recipe, int8_blocks) -> dict:
    """onnxruntime's weight tools (targets/onnx/precisions.py) on the fp32 step graph."""
    import dataclasses

    import onnx

    from layerwise.targets.onnx.precisions import convert

    if precision != "int4-mixed":
        return convert(fp32, out, precision, recipe, [])
    prefixes = tuple(f"layers.{i}/" for i in int8_blocks)
    keep = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node
            if n.name.startswith(prefixes)] if prefixes else []
    int4 = fp32.with_name("int4.onnx")
    first = convert(fp32, int4, "int4-weight", recipe, keep)
    if not keep:
        int4.replace(out)
        return {**first, "int8_blocks": []}
    eight = dataclasses.replace(recipe, weight_bits=8, op_types=("MatMul",))
    second = convert(int4, out, "int8-weight", eight, [])
    return {"precision": "int4-mixed", "int4": first, "int8": second,
            "int8_blocks": list(int8_blocks)}


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


def fold_weight_transposes(graph) -> int:
    """Replace each Transpose of a weight (an initializer) by the transposed weight: a tied
    LM head is exported as MatMul(x, Transpose(embedding)), which would transpose the whole
    table at every step and hide the weight from the int4/int8 weight quantizers. In place;
    returns how many were folded (the original stays for the embedding's Gather)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.graph.initializer}
    keep, folded = [], 0
    for node in graph.graph.node:
        if node.op_type == "Transpose" and node.input[0] in inits:
            w = numpy_helper.to_array(inits[node.input[0]])
            perm = next((helper.get_attribute_value(a) for a in node.attribute
                         if a.name == "perm"), None)
            graph.graph.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(w.transpose(perm)), node.output[0]))
            folded += 1
        else:
            keep.append(node)
    if folded:
        del graph.graph.node[:]
        graph.graph.node.extend(keep)
        used = {i for n in graph.graph.node for i in n.input} | {
            o.name for o in graph.graph.output}
        kept = [i for i in graph.graph.initializer if i.name in used]
        del graph.graph.initializer[:]
        graph.graph.initializer.extend(kept)
    return folded


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
