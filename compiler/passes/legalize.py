"""Legalizations: rewrites that keep semantics but suit a backend's importer."""

from __future__ import annotations

import torch

aten = torch.ops.aten


def legalize_views(ir):
    """Rewrite every `aten.view` to `aten.reshape` (in place; returns the same IR).

    Assumes a decomposed program. torch.onnx's own decomposition cannot always re-view a
    non-contiguous tensor (T5's attention), while reshape copies when it must.
    """
    gm = ir.program.graph_module
    changed = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is aten.view.default:
            node.target = aten.reshape.default
            changed += 1
    if changed:
        gm.recompile()
    ir.annotations.setdefault("passes", []).append({"name": "legalize_views", "rewritten": changed})
    return ir


def legalize_copies(ir):
    """Rewrite every functional `aten.copy(dst, src)` (src broadcast into dst's shape and
    dtype) as `zeros_like(dst) + src`, cast to dst's dtype (in place; returns the same IR).

    torch.onnx lowers copy to src itself, unbroadcast: Swin's attention mask, filled by
    copying a scalar into slices, then fails onnxruntime's shape inference.
    """
    gm = ir.program.graph_module
    graph, changed = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.copy.default:
            continue
        dst, src = node.args[0], node.args[1]
        dtype = node.meta["val"].dtype
        with graph.inserting_before(node):
            zeros = graph.call_function(aten.zeros_like.default, (dst,))
            zeros.meta["val"] = node.meta["val"]
            total = graph.call_function(aten.add.Tensor, (zeros, src))
            total.meta["val"] = node.meta["val"]
            new = total
            src_val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
            if src_val is None or src_val.dtype != dtype:
                new = graph.call_function(aten._to_copy.default, (total,), {"dtype": dtype})
                new.meta["val"] = node.meta["val"]
        for key in ("nn_module_stack", "stack_trace"):
            if key in node.meta:
                for n in {zeros, total, new}:
                    n.meta[key] = node.meta[key]
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        changed += 1
    if changed:
        gm.recompile()
    ir.annotations.setdefault("passes", []).append({"name": "legalize_copies",
                                                    "rewritten": changed})
    return ir
