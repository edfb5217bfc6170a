"""Bilinear and nearest resizing of NCHW images (`F.interpolate`, as segmentation heads
upsample their logits) as LiteRT's RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR over NHWC.
torch's align_corners=False is TFLite's half_pixel_centers (both clamp the first source row
at 0); align_corners=True is TFLite's align_corners."""

from __future__ import annotations

import numpy as np
import torch

from layerwise.targets.tflite.nn import NHWC
from layerwise.targets.tflite.ops import permuted, registrar

aten = torch.ops.aten
RESIZE: dict = {}

_reg = registrar(RESIZE)


@_reg(aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default)
def bilinear(cx, node):
    align = bool(node.args[2])
    return _resize(cx, node, "RESIZE_BILINEAR", "ResizeBilinear", alignCorners=align,
                   halfPixelCenters=not align)


@_reg(aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default)
def nearest(cx, node):
    h, w = cx.shape(node)[2:]
    src = cx.shape(node.args[0])[2:]
    if h % src[0] or w % src[1]:
        return _nearest_by_gather(cx, node, (h, w), src)
    return _resize(cx, node, "RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighbor",
                   alignCorners=False, halfPixelCenters=False)


def _nearest_by_gather(cx, node, size, src):
    """A non-integer factor (GhostNetV2 resizes 7 to 14 and 4 to 7): the source rows and
    columns torch picks, floor(dst * scale) in float32 with scale = in / out or 1 / the
    given scale factor, taken by two GATHERs, so no kernel's own rounding enters."""
    factors = node.args[2] if len(node.args) > 2 else None
    x = cx.b.relayout(cx.value(node.args[0]), NHWC)
    for axis, (n_out, n_in) in enumerate(zip(size, src)):
        scale = np.float32(1.0 / factors[axis]) if factors else np.float32(n_in / n_out)
        idx = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale), n_in - 1)
        shape = list(x.shape)
        shape[axis + 1] = n_out
        last = axis == 1
        out = cx.out(node, shape, NHWC) if last else \
            cx.b.tensor(f"{node.name}_rows", shape, x.dtype, NHWC, x.q)
        cx.b.op("GATHER", [x, cx.b.const(idx.astype(np.int32), f"{node.name}_idx{axis}")],
                [out], "Gather", axis=axis + 1)
        x = out
    return x


def _resize(cx, node, op: str, options: str, **fields):
    x = cx.b.relayout(cx.value(node.args[0]), NHWC)
    shape = permuted(cx.shape(node), NHWC)
    out = cx.out(node, shape, NHWC)
    size = cx.b.int_const([shape[1], shape[2]], f"{node.name}_size")
    cx.b.op(op, [x, size], [out], options, **fields)
    return out
