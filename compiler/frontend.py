"""Frontend: torch.export (non-strict), decomposed to Core ATen, into the IR.

The batch dimension of every input is marked `Dim.AUTO`: export keeps it dynamic where the
model allows and specialises it otherwise; which inputs stayed dynamic is recorded in the IR.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

import torch
from torch.export import Dim

from layerwise.base.errors import ExportError
from layerwise.compiler.ir import IR
from layerwise.compiler.layers import build_layer_table


def flatten_outputs(obj: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) leaves of a model output in torch pytree order (dicts by key, tuples by
    index, None skipped); a lone tensor is named 'output'."""
    if isinstance(obj, torch.Tensor):
        return [(prefix or "output", obj)]
    out: list[tuple[str, torch.Tensor]] = []
    if isinstance(obj, dict):  # includes transformers' ModelOutput
        for k, v in obj.items():
            out += flatten_outputs(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            out += flatten_outputs(v, f"{prefix}.{i}" if prefix else f"output_{i}")
    return out


def lift(source, *, decompose: bool = True) -> IR:
    """Export `source` (a layerwise.sources.Source) to the IR; raises ExportError on failure."""
    if isinstance(source.program, IR):
        return source.program
    if source.program is not None:
        ep = keyword_program(source.program, source.inputs)
        ep = ep.run_decompositions() if decompose else ep
        ref = [t for t in torch.utils._pytree.tree_leaves(ep.module()(**source.inputs))
               if isinstance(t, torch.Tensor)]
        names = [f"output_{i}" for i in range(len(ref))] if len(ref) > 1 else ["output"]
        return _make_ir(ep, source, ref, names)

    model = source.module.eval()
    with torch.no_grad():
        try:
            eager = model(**source.inputs)
        except Exception as e:
            raise ExportError(f"the model fails on its example inputs: {_where(e)}; check the "
                              "input shapes and dtypes the model expects") from e
    named = flatten_outputs(eager)
    dynamic = {k: {0: Dim.AUTO} if v.dim() > 0 else None for k, v in source.inputs.items()}
    try:
        ep = torch.export.export(model, (), kwargs=source.inputs, dynamic_shapes=dynamic,
                                 strict=False)
    except Exception as e:
        raise ExportError(
            f"torch.export cannot lift {source.spec}: {_where(e)}. Try: remove data-dependent "
            "Python control flow or .item()/.tolist() at that line, or export the model "
            "yourself with torch.export and pass the .pt2") from e
    if decompose:
        ep = ep.run_decompositions()
    ir = _make_ir(ep, source, [t for _, t in named], [n for n, _ in named])
    leaves = ir.run()
    if len(leaves) != len(named):
        raise ExportError(f"the exported program returns {len(leaves)} tensors where the model "
                          f"returns {len(named)}; export the model yourself and pass the .pt2")
    return ir


def keyword_program(ep, inputs: dict[str, torch.Tensor]):
    """`ep` callable as `ep.module()(**inputs)`. A program saved from `export(m, (x,))` takes
    its inputs by position; it is re-exported through its unlifted module with a keyword input
    spec, keeping the dims that were dynamic dynamic. Assumes `inputs` are named as the
    program's user-input placeholders."""
    import torch.utils._pytree as pytree

    in_spec = ep.call_spec.in_spec
    names = list(ep.graph_signature.user_inputs)
    if in_spec is not None and pytree.tree_structure(((), dict(inputs))) == in_spec:
        return ep
    gm = ep.module()
    codegen = gm.graph._codegen
    info = getattr(codegen, "pytree_info", None)
    if info is None or list(info.orig_args) != names or set(names) != set(inputs):
        raise ExportError(f"the program takes inputs {names} in a structure layerwise cannot "
                          "name; export the model with keyword tensors: torch.export.export("
                          "model, (), kwargs={name: tensor, ...})")
    spec = pytree.tree_structure(((), {n: inputs[n] for n in names}))
    codegen.pytree_info = info._replace(in_spec=spec)
    gm._in_spec = spec
    gm.recompile()
    dynamic = {}
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in inputs:
            shape = getattr(node.meta.get("val"), "shape", ())
            dims = {i: Dim.AUTO for i, d in enumerate(shape) if not isinstance(d, int)}
            dynamic[node.name] = dims or None
    kwargs = {n: inputs[n] for n in names}
    try:
        return torch.export.export(gm, (), kwargs=kwargs,
                                   dynamic_shapes={n: dynamic.get(n) for n in names},
                                   strict=False)
    except Exception as e:
        raise ExportError(f"re-exporting the program with keyword inputs failed: {_where(e)}; "
                          "export the model with torch.export.export(model, (), kwargs=...)"
                          ) from e


def _make_ir(ep, source, reference, names) -> IR:
    symbols: dict[str, str | None] = {}
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in source.inputs:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim():
                dim0 = val.shape[0]
                symbols[node.name] = None if isinstance(dim0, int) else str(dim0)
    # A batch: every input's first dim is dynamic and of one example size. Other dynamic dims
    # (a graph's node count beside its edge list) stay dynamic but are not a batch to slice.
    sizes = {int(source.inputs[k].shape[0]) for k in symbols}
    batch = bool(symbols) and None not in symbols.values() and len(sizes) == 1
    dynamic_inputs = list(symbols) if batch else []
    other_dynamic = {} if batch else {k: v for k, v in symbols.items() if v is not None}
    meta = {
        "spec": source.spec,
        "modality": source.modality,
        "task": source.task,
        "notes": list(source.notes),
        "dynamic_inputs": dynamic_inputs,
        "other_dynamic": other_dynamic,
        "torch": torch.__version__,
    }
    if getattr(source, "postprocess", None):
        meta["postprocess"] = dict(source.postprocess)
    return IR(ep, build_layer_table(ep), dict(source.inputs),
              [t.detach() for t in reference], list(names), meta)


def _where(e: BaseException) -> str:
    """First line of the error plus the deepest frame in user code (not torch, not layerwise)."""
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    torch_dir = os.path.dirname(torch.__file__)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outside = [f for f in traceback.extract_tb(e.__traceback__)
               if not f.filename.startswith((torch_dir, here))]
    frames = [f for f in outside if "site-packages" not in f.filename] or outside
    loc = f" (at {frames[-1].filename}:{frames[-1].lineno}: {frames[-1].line})" if frames else ""
    return f"{type(e).__name__}: {msg}{loc}"
