"""FLOPs of Core ATen nodes from their shape metadata (multiply-add counts as 2)."""

from __future__ import annotations

import math

import torch
from torch import fx
from torch.fx.experimental.symbolic_shapes import optimization_hint

aten = torch.ops.aten


def size_hint(d) -> int:
    """Concrete size of a dim; for a symbolic one its example value, without adding a guard
    (int() on a SymInt would specialise the exported program to that size)."""
    if isinstance(d, int):
        return d
    hint = optimization_hint(d, fallback=0)
    return int(hint)


def _numel(val) -> int:
    if isinstance(val, torch.Tensor):
        return math.prod(size_hint(d) for d in val.shape)
    if isinstance(val, (tuple, list)):
        return sum(_numel(v) for v in val)
    return 0


def _shape(node) -> tuple[int, ...]:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return ()
    return tuple(size_hint(d) for d in val.shape)


def _mm_flops(node: fx.Node) -> int:
    out = _numel(node.meta.get("val"))
    a = node.args[1] if node.target is aten.addmm.default else node.args[0]
    k = _shape(a)[-1] if _shape(a) else 0
    return 2 * out * k


def _conv_flops(node: fx.Node) -> int:
    weight = _shape(node.args[1])
    if len(weight) < 3:
        return 0
    per_output = math.prod(weight[1:])  # (Cin / groups) * kernel
    return 2 * _numel(node.meta.get("val")) * per_output


def _sdpa_flops(node: fx.Node) -> int:
    q, k = _shape(node.args[0]), _shape(node.args[1])
    if len(q) < 2 or len(k) < 2:
        return 0
    return 4 * math.prod(q[:-1]) * k[-2] * q[-1]


_MATMUL = {aten.mm.default, aten.bmm.default, aten.addmm.default}
_CONV = {aten.convolution.default}
_SDPA = {
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten.scaled_dot_product_attention.default,
}


def node_flops(node: fx.Node) -> int:
    """FLOPs of one call_function node; elementwise and reductions count one per output."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return 0
    if node.target in _MATMUL:
        return _mm_flops(node)
    if node.target in _CONV:
        return _conv_flops(node)
    if node.target in _SDPA:
        return _sdpa_flops(node)
    if node.target is aten.matmul.default:
        return _mm_flops(node)
    tags = getattr(node.target, "tags", ())
    if torch.Tag.pointwise in tags or "reduction" in str(node.target) or node.target in (
        aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten._softmax.default,
        aten._log_softmax.default, aten.native_layer_norm.default,
        aten._native_batch_norm_legit_no_training.default, aten.max_pool2d_with_indices.default,
        aten.avg_pool2d.default,
    ):
        return _numel(node.meta.get("val"))
    return 0
