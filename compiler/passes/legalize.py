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
