"""3-d convolution (torchvision's video ResNets: r3d, mc3, r2plus1d) as LiteRT's CONV_3D on
NDHWC tensors, filters DHWIO, with a following batch norm and ReLU folded in. LiteRT's
CONV_3D is float only: an int8 model with one is refused in one line."""

from __future__ import annotations

import numpy as np

from layerwise.targets.tflite.fuse import absorb_activation, absorb_batchnorm, bind
from layerwise.targets.tflite.ops import permuted

NDHWC = (0, 2, 3, 4, 1)


def conv3d(cx, node):
    """Emit aten.convolution with 5-d weights (not transposed, groups 1)."""
    x_arg, w_arg, b_arg, stride, padding, dilation, _transposed, _, groups = node.args
    if cx.int8:
        raise cx.fail(node, "3-d convolution in int8 is not supported (LiteRT's CONV_3D is "
                      "float only)", "Compile at --precision fp32, or use --target onnx")
    if groups != 1:
        raise cx.fail(node, "grouped 3-d convolution is not supported")
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
    w = cx.b.const(np.ascontiguousarray(W.transpose(2, 3, 4, 1, 0), np.float32),
                   f"{node.name}_w")
    b = cx.b.const(bias.astype(np.float32), f"{node.name}_b")
    out = cx.b.tensor(last.name, permuted(cx.shape(node), NDHWC), np.float32, NDHWC)
    cx.b.op("CONV_3D", [x, w, b], [out], "Conv3D", padding=1, strideD=int(stride[0]),
            strideH=int(stride[1]), strideW=int(stride[2]), dilationDFactor=int(dilation[0]),
            dilationHFactor=int(dilation[1]), dilationWFactor=int(dilation[2]),
            fusedActivationFunction=act)
    bind(cx, chain, out)
    return out
