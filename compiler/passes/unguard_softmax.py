"""`unguard_softmax`: drop the all-masked-row guard of `_safe_softmax` where no row can be
fully masked.

`F.scaled_dot_product_attention` decomposes into `aten._safe_softmax`, and Core ATen spells
that as a softmax plus a guard over the same scores:

    s = _softmax(x, d);  m = logical_not(any(logical_not(eq(x, -inf)), d, keepdim))
    out = where(m, full_like(s, 0), s)

i.e. rows whose scores are all -inf give 0 instead of NaN. The guard is six full-size ops
per attention layer on bool tensors (Equal, Not, Cast, ReduceMax, Not, Where in the ONNX),
which no backend fuses, so each costs a full pass over the scores. When the scores are a
matmul of activations (scaled, reshaped) with no mask added, finite activations give finite
scores and the guard never fires, so `out` is `s`. Scores that pass through anything else
(an additive or boolean mask, a bias) keep it.

Assumes finite activations (an inf in q or k would turn the guard's zeros into NaN).
"""

from __future__ import annotations

import torch

aten = torch.ops.aten

# ops a score tensor may pass through from its matmul and stay finite for finite inputs
_PRODUCTS = {aten.bmm.default, aten.mm.default, aten.matmul.default}
_CARRIERS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
             aten.clone.default, aten.expand.default, aten.permute.default,
             aten.transpose.int, aten.mul.Scalar, aten.div.Scalar, aten.contiguous.default,
             aten.alias.default}


def _finite_scores(node) -> bool:
    """Whether `node` is a matmul of activations reached through shape ops and scalar
    scaling only (no mask, bias or constant enters)."""
    while node.op == "call_function":
        if node.target in _PRODUCTS:
            return True
        if node.target not in _CARRIERS:
            return False
        node = node.args[0]
    return False


def _guard_of(where):
    """(scores, softmax) when `where` is the guard of a `_safe_softmax`, else None."""
    if where.op != "call_function" or where.target is not aten.where.self:
        return None
    mask, zero, s = where.args
    if not (getattr(s, "target", None) is aten._softmax.default
            and getattr(zero, "target", None) is aten.full_like.default
            and zero.args[0] is s and zero.args[1] == 0
            and getattr(mask, "target", None) is aten.logical_not.default):
        return None
    anyop = mask.args[0]
    if getattr(anyop, "target", None) not in (aten.any.dim, aten.any.dims):
        return None
    inner = anyop.args[0]
    if getattr(inner, "target", None) is not aten.logical_not.default:
        return None
    eq = inner.args[0]
    x = s.args[0]
    if not (getattr(eq, "target", None) is aten.eq.Scalar and eq.args[0] is x
            and eq.args[1] == float("-inf")):
        return None
    return x, s


def unguard_softmax(ir):
    """Replace each `_safe_softmax` guard over unmasked matmul scores by its softmax (in
    place; returns the same IR); the guard's nodes are removed as dead code."""
    gm = ir.program.graph_module
    removed = 0
    for node in list(gm.graph.nodes):
        hit = _guard_of(node)
        if hit is None or not _finite_scores(hit[0]):
            continue
        node.replace_all_uses_with(hit[1])
        removed += 1
    if removed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
        alive = {n.name for n in gm.graph.nodes}
        for layer in ir.layers:  # the layer table keeps naming live nodes only
            layer.nodes[:] = [n for n in layer.nodes if n in alive]
    ir.annotations.setdefault("passes", []).append({"name": "unguard_softmax",
                                                    "rewritten": removed})
    return ir
