"""3-d convolution (torchvision's video ResNets: r3d, mc3, r2plus1d) as LiteRT's CONV_3D on
NDHWC tensors, filters DHWIO, with a following batch norm and ReLU folded in. LiteRT's
CONV_3D is float only and takes no groups: a depthwise one (MViT's pooling) becomes one
DEPTHWISE_CONV_2D per temporal tap over the frames it reads, summed; other groups are split
along the channels, convolved and concatenated. An int8 model with one is refused in one
line. 3-d max and average pooling (S3D) are two 2-d poolings: over each frame's H x W, then over
time."""

from __future__ import annotations

import numpy as np
import torch

from layerwise.targets.tflite.fuse import absorb_activation, absorb_batchnorm, bind
from layerwise.targets.tflite.ops import permuted

aten = torch.ops.aten
NDHWC = (0, 2, 3, 4, 1)


def conv3d(cx, node):
    """Emit aten.convolution with 5-d weights (not transposed, groups 1)."""
    x_arg, w_arg, b_arg, stride, padding, dilation, _transposed, _, groups = node.args
    if cx.int8:
        raise cx.fail(node, "3-d convolution in int8 is not supported (LiteRT's CONV_3D is "
                      "float only)", "Compile at --precision fp32, or use --target onnx")
    W = np.asarray(cx.concrete(w_arg), np.float64)  # O, I, kd, kh, kw
    bias = np.asarray(cx.concrete(b_arg), np.float64) if b_arg is not None else \
        np.zeros(W.shape[0])
    chain, bn = absorb_batchnorm(cx, node)
    if bn is not None:
        W = W * bn[0][:, None, None, None, None]
        bias = bias * bn[0] + bn[1]
    more, act = absorb_activation(cx, chain[-1])
    chain += more[1:]
    last = chain[-1]
    x = cx.b.relayout(cx.value(x_arg), NDHWC)
    if any(padding):
        pads = np.asarray([[0, 0], *[[p, p] for p in padding], [0, 0]], np.int32)
        shape = (x.shape[0], *[s + 2 * p for s, p in zip(x.shape[1:4], padding)], x.shape[4])
        padded = cx.b.tensor(f"{node.name}_pad", shape, x.dtype, x.perm)
        cx.b.op("PAD", [x, cx.b.const(pads, "pads")], [padded])
        x = padded
    shape = permuted(cx.shape(node), NDHWC)
    C = x.shape[4]
    how = {"stride": stride, "dilation": dilation, "act": act}
    if groups == 1:
        out = _conv3d(cx, x, W, bias, name=last.name, shape=shape, **how)
    elif groups == C and W.shape[0] == C:
        out = _depthwise(cx, x, W, bias, name=last.name, shape=shape, **how)
    else:
        og, cg = W.shape[0] // groups, C // groups
        parts = []
        for g in range(groups):
            begin, end = [0, 0, 0, 0, g * cg], [*x.shape[:4], (g + 1) * cg]
            xg = cx.b.tensor(f"{node.name}_in{g}", (*x.shape[:4], cg), x.dtype, NDHWC)
            cx.b.op("STRIDED_SLICE", [x, cx.b.int_const(begin), cx.b.int_const(end),
                                      cx.b.int_const([1] * 5)], [xg], "StridedSlice",
                    endMask=0b1111)
            parts.append(_conv3d(cx, xg, W[g * og:(g + 1) * og], bias[g * og:(g + 1) * og],
                                 name=f"{node.name}_g{g}", shape=(*shape[:4], og), **how))
        out = cx.b.tensor(last.name, shape, np.float32, NDHWC)
        cx.b.op("CONCATENATION", parts, [out], "Concatenation", axis=4)
    bind(cx, chain, out)
    return out


def _conv3d(cx, x, W, bias, *, stride, dilation, act, name, shape):
    """CONV_3D (VALID: x is padded) of NDHWC x with torch weights W [O, I, kd, kh, kw]."""
    w = cx.b.const(np.ascontiguousarray(W.transpose(2, 3, 4, 1, 0), np.float32), f"{name}_w")
    b = cx.b.const(bias.astype(np.float32), f"{name}_b")
    out = cx.b.tensor(name, shape, np.float32, NDHWC)
    cx.b.op("CONV_3D", [x, w, b], [out], "Conv3D", padding=1, strideD=int(stride[0]),
            strideH=int(stride[1]), strideW=int(stride[2]), dilationDFactor=int(dilation[0]),
            dilationHFactor=int(dilation[1]), dilationWFactor=int(dilation[2]),
            fusedActivationFunction=act)
    return out


def _depthwise(cx, x, W, bias, *, stride, dilation, act, name, shape):
    """A depthwise 3-d convolution (W [C, 1, kd, kh, kw]) of padded NDHWC x: for each
    temporal tap, the frames it reads (a strided slice), batch and time merged, one
    DEPTHWISE_CONV_2D with that tap's filter; the taps summed, the activation on the last
    sum."""
    N, _, Hp, Wp, C = x.shape
    Do, Ho, Wo = shape[1:4]
    taps = []
    for kd in range(W.shape[2]):
        first = kd * int(dilation[0])
        frames = cx.b.tensor(f"{name}_f{kd}", (N, Do, Hp, Wp, C), x.dtype, NDHWC)
        cx.b.op("STRIDED_SLICE", [x, cx.b.int_const([0, first, 0, 0, 0]),
                                  cx.b.int_const([N, first + (Do - 1) * int(stride[0]) + 1,
                                                  Hp, Wp, C]),
                                  cx.b.int_const([1, int(stride[0]), 1, 1, 1])], [frames],
                "StridedSlice", endMask=0b1)
        flat = cx.b.reshape(frames, (N * Do, Hp, Wp, C), f"{name}_f{kd}_2d", (0, 1, 2, 3),
                            new_shape=[-1, Hp, Wp, C])
        w = cx.b.const(np.ascontiguousarray(W[:, 0, kd].transpose(1, 2, 0)[None], np.float32),
                       f"{name}_w{kd}")
        b = cx.b.const((bias if kd == 0 else np.zeros_like(bias)).astype(np.float32),
                       f"{name}_b{kd}")
        y = cx.b.tensor(f"{name}_t{kd}", (N * Do, Ho, Wo, C), np.float32, (0, 1, 2, 3))
        cx.b.op("DEPTHWISE_CONV_2D", [flat, w, b], [y], "DepthwiseConv2D", padding=1,
                strideH=int(stride[1]), strideW=int(stride[2]),
                dilationHFactor=int(dilation[1]), dilationWFactor=int(dilation[2]),
                depthMultiplier=1, fusedActivationFunction=act if W.shape[2] == 1 else 0)
        if taps:
            last = W.shape[2] - 1 == kd
            total = cx.b.tensor(f"{name}_sum{kd}", y.shape, np.float32, (0, 1, 2, 3))
            cx.b.op("ADD", [taps[-1], y], [total], "Add",
                    fusedActivationFunction=act if last else 0)
            y = total
        taps.append(y)
    return cx.b.reshape(taps[-1], shape, name, NDHWC, new_shape=[-1, *shape[1:]])


def max_pool3d(cx, node):
    """aten.max_pool3d(_with_indices): the window's max over H x W per frame (batch and time
    merged), then over time (H x W flattened); padding and ceil_mode's overhang padded with
    the lowest value first."""
    a = list(node.args) + [None] * (6 - len(node.args))
    k = _triple(a[1])
    s, p, d = _triple(a[2]) or k, _triple(a[3] or 0), _triple(a[4] or 1)
    if d != [1, 1, 1]:
        raise cx.fail(node, "dilated 3-d pooling is not supported")
    ts = tuple(cx.values[node][0].shape) if node.target is aten.max_pool3d_with_indices.default \
        else cx.shape(node)
    out = _pool3d(cx, node, "MAX_POOL_2D", k=k, s=s, p=p, ts=ts,
                  fill=float(np.finfo(np.float32).min))
    return out if node.target is aten.max_pool3d.default else [out, None]


def avg_pool3d(cx, node):
    """aten.avg_pool3d: the mean over H x W per frame, then over time (the mean of equal
    windows' means); padding counted in the mean is zeros padded first."""
    a = list(node.args) + [None] * (7 - len(node.args))
    k = _triple(a[1])
    s, p = _triple(a[2]) or k, _triple(a[3] or 0)
    if a[6] is not None:
        raise cx.fail(node, "divisor_override is not supported")
    if any(p) and a[5] is False:
        raise cx.fail(node, "3-d average pooling that excludes the padding is not supported")
    ts = cx.shape(node)
    x = cx.value(node.args[0])
    if any((ts[2 + i] - 1) * s[i] + k[i] > x.torch_shape[2 + i] + 2 * p[i] for i in range(3)):
        raise cx.fail(node, "ceil_mode pooling that changes the output size is not supported")
    return _pool3d(cx, node, "AVERAGE_POOL_2D", k=k, s=s, p=p, ts=ts, fill=0.0)


def _pool3d(cx, node, op: str, *, k, s, p, ts, fill: float):
    """op over each frame's H x W window, then over time; padding (and a max pool's ceil_mode
    overhang) filled with `fill` first."""
    x = cx.b.relayout(cx.value(node.args[0]), NDHWC)
    N, C, (Do, Ho, Wo) = x.shape[0], x.shape[4], ts[2:]
    after = [max((ts[2 + i] - 1) * s[i] + k[i] - x.shape[1 + i] - 2 * p[i], 0) for i in range(3)]
    if any(p) or any(after):
        pads = np.asarray([[0, 0], *[[p[i], p[i] + after[i]] for i in range(3)], [0, 0]],
                          np.int32)
        shape = (N, *[x.shape[1 + i] + 2 * p[i] + after[i] for i in range(3)], C)
        padded = cx.b.tensor(f"{node.name}_pad", shape, x.dtype, NDHWC, x.q)
        value = cx.b.const(np.asarray(fill, np.float32), "pad_value", q=x.q)
        cx.b.op("PADV2", [x, cx.b.const(pads, "pads"), value], [padded])
        x = padded
    _, Dp, Hp, Wp, _ = x.shape
    y = cx.b.reshape(x, (N * Dp, Hp, Wp, C), f"{node.name}_frames", (0, 1, 2, 3),
                     new_shape=[-1, Hp, Wp, C])
    y = _pool2d(cx, y, op, (k[1], k[2]), (s[1], s[2]), shape=(N * Dp, Ho, Wo, C),
                name=f"{node.name}_hw")
    y = cx.b.reshape(y, (N, Dp, Ho * Wo, C), f"{node.name}_time", (0, 1, 2, 3),
                     new_shape=[-1, Dp, Ho * Wo, C])
    y = _pool2d(cx, y, op, (k[0], 1), (s[0], 1), shape=(N, Do, Ho * Wo, C),
                name=f"{node.name}_t")
    return cx.b.reshape(y, (N, Do, Ho, Wo, C), node.name, NDHWC, new_shape=[-1, Do, Ho, Wo, C])


def _pool2d(cx, x, op: str, k, s, *, shape, name):
    """op (VALID) of NHWC x; x itself for a 1 x 1 window of stride 1."""
    if tuple(k) == (1, 1) and tuple(s) == (1, 1):
        return x
    out = cx.b.tensor(name, shape, x.dtype, (0, 1, 2, 3), x.q)
    cx.b.op(op, [x], [out], "Pool2D", padding=1, strideH=int(s[0]),
            strideW=int(s[1]), filterHeight=int(k[0]), filterWidth=int(k[1]))
    return out


def _triple(v) -> list[int] | None:
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return None
    return [int(v)] * 3 if isinstance(v, int) else [int(i) for i in v] * (3 // len(v))
