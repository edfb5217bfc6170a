"""Bilinear and nearest resizing of NCHW images (`F.interpolate`, as segmentation heads
upsample their logits) as LiteRT's RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR over NHWC.
torch's align_corners=False is TFLite's half_pixel_centers (both clamp the first source row
at 0); align_corners=True is TFLite's align_corners."""

from __future__ import annotations

import torch

from layerwise.targets.tflite.nn import NHWC
from layerwise.targets.tflite.ops import permuted

aten = torch.ops.aten
RESIZE: dict = {}


def _reg(*targets):
    def deco(fn):
        for t in targets:
            RESIZE[t] = fn
        return fn
    return deco


@_reg(aten.upsample_bilinear2d.vec, aten.upsample_bilinear2d.default)
def bilinear(cx, node):
    align = bool(node.args[2])
    return _resize(cx, node, "RESIZE_BILINEAR", "ResizeBilinear", alignCorners=align,
                   halfPixelCenters=not align)


@_reg(aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default)
def nearest(cx, node):
    h, w = cx.shape(node)[2:]
    src = cx.shape(node.args[0])[2:]
    if h % src[0] or w % src[1]:  # torch's nearest floors dst * in / out; TFLite rounds
        raise cx.fail(node, "nearest resizing by a non-integer factor is not supported")
    return _resize(cx, node, "RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighbor",
                   alignCorners=False, halfPixelCenters=False)


def _resize(cx, node, op: str, options: str, **fields):
    x = cx.b.relayout(cx.value(node.args[0]), NHWC)
    shape = permuted(cx.shape(node), NHWC)
    out = cx.out(node, shape, NHWC)
    size = cx.b.int_const([shape[1], shape[2]], f"{node.name}_size")
    cx.b.op(op, [x, size], [out], options, **fields)
    return out
