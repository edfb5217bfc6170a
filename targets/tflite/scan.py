"""Running sums: `cumsum` as LiteRT's CUMSUM (RoBERTa and XLM-R build their position ids
as the cumulative sum of the padding mask). Integer and float tensors; a float cumsum inside
an int8 model is refused (one line at emit time)."""

from __future__ import annotations

import numpy as np
import torch

from layerwise.targets.tflite.ops import cast, permuted, registrar

aten = torch.ops.aten
SCAN: dict = {}

_reg = registrar(SCAN)


@_reg(aten.cumsum.default)
def cumsum(cx, node):
    x = cx.value(node.args[0])
    want = cx.dtype(node)
    if want.kind == "f" and cx.int8:
        raise cx.fail(node, "a float cumsum in an int8 model is not supported",
                      "Compile at --precision fp32, or use --target onnx")
    if want.kind not in "fi" or want.itemsize not in (4, 8):
        raise cx.fail(node, f"cumsum of {want} is not supported (LiteRT sums float32, int32 "
                      "and int64)")
    if x.dtype != want:
        x = cast(cx, x, want, f"{node.name}_cast")
    dim = node.args[1] % len(x.shape)
    out = cx.out(node, permuted(cx.shape(node), x.perm), x.perm, q=None)
    axis = cx.b.const(np.asarray(x.perm.index(dim), np.int32), "axis")
    cx.b.op("CUMSUM", [x, axis], [out], "Cumsum", exclusive=False, reverse=False)
    return out
