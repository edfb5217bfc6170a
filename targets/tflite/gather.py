"""Gathers along one axis with run-time indices: `torch.gather` as LiteRT's GATHER_ND over
coordinates built in the graph (the other axes' positions are constant grids, the gathered
axis is the index tensor). RoBERTa and XLM-R gather their token-type ids this way."""

from __future__ import annotations

import numpy as np
import torch

from layerwise.targets.tflite.graph import identity
from layerwise.targets.tflite.ops import cast, permuted, registrar

aten = torch.ops.aten
GATHER: dict = {}

_reg = registrar(GATHER)


@_reg(aten.gather.default)
def gather(cx, node):
    src, dim, index = node.args[:3]
    if (len(node.args) > 3 and node.args[3]) or node.kwargs.get("sparse_grad"):
        raise cx.fail(node, "sparse_grad gathers are not supported")
    x = cx.b.plain(cx.value(src))
    shape = cx.shape(node)
    rank = len(shape)
    dim %= rank
    idx = cast(cx, cx.b.plain(cx.value(index)), np.int32, f"{node.name}_idx32")
    col = cx.b.reshape(idx, (*shape, 1), f"{node.name}_col")
    grids = np.indices(shape, dtype=np.int32)
    parts = [col if d == dim else cx.b.const(np.ascontiguousarray(grids[d][..., None]),
                                               f"{node.name}_pos{d}")
             for d in range(rank)]
    coords = cx.b.tensor(f"{node.name}_coords", (*shape, rank), np.int32)
    cx.b.op("CONCATENATION", parts, [coords], "Concatenation", axis=rank)
    out = cx.out(node, shape, identity(rank), q=x.q)
    cx.b.op("GATHER_ND", [x, coords], [out])
    return out


@_reg(aten.index_select.default)
def index_select(cx, node):
    """x.index_select(dim, index): GATHER along dim (in x's own layout) by a 1-D index."""
    src, dim, index = node.args[:3]
    x = cx.value(src)
    dim %= len(x.shape)
    idx = cast(cx, cx.b.plain(cx.value(index)), np.int32, f"{node.name}_idx32")
    out = cx.out(node, permuted(cx.shape(node), x.perm), x.perm, q=x.q)
    cx.b.op("GATHER", [x, idx], [out], "Gather", axis=x.perm.index(dim))
    return out
