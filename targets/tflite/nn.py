"""ATen -> TFLite converters for the layers: convolution, pooling, matmul, normalization.

Fusions done while converting (each only when the intermediate has a single user):
batch norm into the preceding convolution's weights, ReLU / ReLU6 / ReLU_N1_TO_1 into the
producing op's fused activation, and `x * clamp(x + 3, 0, 6) / 6` into HARD_SWISH.
For int8, weights are per-channel symmetric (conv: output axis, depthwise: last axis,
fully connected: rows) and the int32 bias has scale input_scale * weight_scale; the bias
absorbs the mean output error of the rounded weights (bias correction) when calibration
measured the input's channel means.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from layerwise.targets.tflite.fuse import absorb_activation, absorb_batchnorm, bind
from layerwise.targets.tflite.graph import QParams, symmetric_per_channel
from layerwise.targets.tflite.ops import permuted

aten = torch.ops.aten
NN: dict = {}
NHWC = (0, 2, 3, 1)


def nn(*targets):
    def deco(fn):
        for t in targets:
            assert t not in NN, t
            NN[t] = fn
        return fn
    return deco


# ---------------------------------------------------------------- weights

def _weights(cx, w: np.ndarray, bias: np.ndarray, x, axis: int, name: str, *, x_node=None,
             float_out: bool = False):
    """(input, weight, bias) tensors: int8 per-channel weights and int32 bias when the input
    x is quantized; float in a float model.

    With the channel means of the input (`cx.means[x_node.name]`, from calibration), the bias
    absorbs the mean output error of the rounded weights. `float_out`: a float layer (its
    output float) reading x (DEQUANTIZEd if int8) and the int8 weights DEQUANTIZEd, with a
    float bias. A float x in an int8 model: float weights, or for the linears the plan gives
    LiteRT's hybrid kernel (`cx.hybrid`) int8 weights, the input quantized per row as it
    runs."""
    b = cx.b
    if not cx.quantized or (x.q is None and not float_out and name not in cx.hybrid):
        return (x, b.const(w.astype(np.float32), f"{name}_w"),
                b.const(bias.astype(np.float32), f"{name}_b"))
    wq, qp = symmetric_per_channel(w.astype(np.float32), axis)
    mean = cx.means.get(getattr(x_node, "name", None))
    if mean is not None:
        bias = bias + rounding_shift(w, wq, qp, axis, mean)
    wv = b.tensor(f"{name}_w", w.shape, np.float32, q=qp, data=wq)
    if float_out:
        return (b.dequantize(x, f"{name}_xf"), b.dequantize(wv, f"{name}_wf"),
                b.const(bias.astype(np.float32), f"{name}_b"))
    if x.q is None:
        return x, wv, b.const(bias.astype(np.float32), f"{name}_b")
    bscale = x.q.scale[0] * np.asarray(qp.scale, np.float64)
    bq = np.round(bias / bscale).astype(np.int64)
    bq = np.clip(bq, -2**31 + 1, 2**31 - 1).astype(np.int32)
    bqp = QParams(tuple(float(s) for s in bscale), (0,) * len(bscale), 0)
    bv = b.tensor(f"{name}_b", bias.shape, np.float32, q=bqp, data=bq, storage=np.int32)
    return x, wv, bv


def rounding_shift(w: np.ndarray, wq: np.ndarray, qp: QParams, axis: int,
                   mean: np.ndarray) -> np.ndarray:
    """Per output channel, E[x] . (W - W_int8): the mean of what rounding the weights (TFLite
    layout: conv OHWI / FC [out, in] with axis 0, depthwise 1HWO with axis 3) takes off the
    output, for inputs of channel means `mean` (border padding ignored)."""
    shape = [1] * w.ndim
    shape[axis] = -1
    err = w.astype(np.float64) - wq * np.asarray(qp.scale, np.float64).reshape(shape)
    mean = np.asarray(mean, np.float64)
    if axis == 0:  # every input channel reaches every output channel
        if err.shape[-1] != mean.size:
            return np.zeros(err.shape[0])
        return err.reshape(err.shape[0], -1, err.shape[-1]).sum(1) @ mean
    per_out = err.sum(axis=tuple(i for i in range(err.ndim) if i != axis))
    if per_out.size % mean.size:
        return np.zeros(per_out.size)
    return per_out * np.repeat(mean, per_out.size // mean.size)  # depthwise: own channel


def _output_q(cx, last, x, wv):
    """The int8 parameters of a conv / linear output: its calibrated range, its scale raised
    to input scale x weight scale / 128 where it is finer. XNNPACK fails the whole delegate
    when a layer's requantization scale reaches 256: a layer whose calibrated output is all
    zeros (a zero-initialised norm folded into it) would have scale 1e-8."""
    q = cx.qparams(last)
    if q is None or x.q is None or wv.q is None:
        return q
    need = x.q.scale[0] * max(wv.q.scale) / 128.0
    return q if q.scale[0] >= need else QParams((need,), q.zero_point)


def _pad_mode(size, k, s, p, d):
    """'VALID', 'SAME' when TFLite's SAME equals torch's symmetric padding p, else 'PAD'."""
    eff = d * (k - 1) + 1
    out_t = (size + 2 * p - eff) // s + 1
    out_same = -(-size // s)
    total = max((out_same - 1) * s + eff - size, 0)
    if p == 0:
        return "VALID" if total == 0 or out_t != out_same else "BOTH"
    return "SAME" if out_t == out_same and total // 2 == p else "PAD"


def _padding(modes):
    if all(m in ("VALID", "BOTH") for m in modes):
        return 1, False
    if all(m in ("SAME", "BOTH") for m in modes):
        return 0, False
    return 1, True


def _pad(cx, x, ph, pw, name, *, value=None, after=(0, 0)):
    """x padded by ph / pw on both sides of H / W, plus `after` more at the bottom / right."""
    pads = np.asarray([[0, 0], [ph, ph + after[0]], [pw, pw + after[1]], [0, 0]], np.int32)
    shape = (x.shape[0], x.shape[1] + 2 * ph + after[0], x.shape[2] + 2 * pw + after[1],
             x.shape[3])
    out = cx.b.tensor(name, shape, x.dtype, x.perm, x.q)
    if value is None:
        cx.b.op("PAD", [x, cx.b.const(pads, "pads")], [out])
    else:
        c = cx.b.const(np.asarray(value, np.float32), "pad_value", q=x.q)
        cx.b.op("PADV2", [x, cx.b.const(pads, "pads"), c], [out])
    return out


def _pair(v, default=None):
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        v = default
    return [int(v)] * 2 if isinstance(v, int) else [int(i) for i in v] * (2 // len(v))


# ---------------------------------------------------------------- convolution

@nn(aten.convolution.default)
def convolution(cx, node):
    x_arg, w_arg, b_arg, stride, padding, dilation, transposed, _, groups = node.args
    if transposed:
        raise cx.fail(node, "transposed convolution is not supported yet")
    if not cx.is_const(w_arg):
        raise cx.fail(node, "convolution weights must be constants")
    W = np.asarray(cx.concrete(w_arg), np.float64)
    O = W.shape[0]
    bias = np.asarray(cx.concrete(b_arg), np.float64) if b_arg is not None else np.zeros(O)
    one_d = W.ndim == 3
    if one_d:
        W = W[:, :, None, :]
        stride, padding, dilation = [1, *stride], [0, *padding], [1, *dilation]
    elif W.ndim == 5:
        from layerwise.targets.tflite.conv3d import conv3d

        return conv3d(cx, node)
    elif W.ndim != 4:
        raise cx.fail(node, f"{W.ndim - 2}-d convolution is not supported")
    else:  # one value for both axes (SigLIP's padding="valid" exports as [0])
        stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    chain, bn = absorb_batchnorm(cx, node)
    if bn is not None:
        W = W * bn[0][:, None, None, None]
        bias = bias * bn[0] + bn[1]
    more, act = absorb_activation(cx, chain[-1])
    chain += more[1:]
    last = chain[-1]
    x = cx.value(x_arg)
    if one_d:
        x = cx.b.relayout(x, (0, 2, 1))
        x = cx.b.reshape(x, (x.shape[0], 1, *x.shape[1:]), f"{node.name}_2d", NHWC)
    else:
        x = cx.b.relayout(x, NHWC)
    C = x.shape[3]
    kh, kw = W.shape[2:]
    modes = [_pad_mode(x.shape[1 + i], (kh, kw)[i], stride[i], padding[i], dilation[i])
             for i in range(2)]
    pad_code, explicit = _padding(modes)
    if explicit:
        x = _pad(cx, x, padding[0], padding[1], f"{node.name}_pad")
    # grouped (not depthwise): CONV_2D whose filters hold C / groups input channels each,
    # which LiteRT reads as groups of the input's channels (builtin kernel, version 6)
    depthwise = groups > 1 and groups == C and W.shape[1] == 1
    ts = cx.shape(node)
    oshape = (ts[0], 1, ts[2], ts[1]) if one_d else permuted(ts, NHWC)
    if depthwise:
        w, qaxis, opname, opts = W.transpose(1, 2, 3, 0), 3, "DEPTHWISE_CONV_2D", \
            {"depthMultiplier": O // C}
    else:
        w, qaxis, opname, opts = W.transpose(0, 2, 3, 1), 0, "CONV_2D", {}
    float_out = x.q is not None and cx.float_output(last)
    x, wv, bv = _weights(cx, np.ascontiguousarray(w), bias, x, qaxis, node.name, x_node=x_arg,
                         float_out=float_out)
    q = None if float_out else _output_q(cx, last, x, wv)
    out = cx.b.tensor(f"{last.name}_4d" if one_d else last.name, oshape, np.float32, NHWC, q)
    cx.b.op(opname, [x, wv, bv], [out], "DepthwiseConv2D" if depthwise else "Conv2D",
            padding=pad_code, strideH=stride[0], strideW=stride[1],
            dilationHFactor=dilation[0], dilationWFactor=dilation[1],
            fusedActivationFunction=act, **opts)
    if one_d:
        out = cx.b.reshape(out, (ts[0], ts[2], ts[1]), last.name, (0, 2, 1))
    bind(cx, chain, out)
    return out


# ---------------------------------------------------------------- pooling

@nn(aten.max_pool2d_with_indices.default, aten.max_pool2d.default)
def max_pool(cx, node):
    a = list(node.args) + [None] * (6 - len(node.args))
    k = _pair(a[1])
    s, p, d = _pair(a[2], k), _pair(a[3] or 0), _pair(a[4] or 1)
    if d != [1, 1]:
        raise cx.fail(node, "dilated pooling is not supported")
    x = cx.b.relayout(cx.value(a[0]), NHWC)
    ts = cx.shape(node) if node.target is aten.max_pool2d.default else \
        tuple(cx.values[node][0].shape)
    # ceil_mode: torch's last window may hang over the bottom / right edge; padding there
    # with the lowest value (int8: its lowest code) and pooling VALID gives its windows
    after = [max((ts[2 + i] - 1) * s[i] + k[i] - x.shape[1 + i] - 2 * p[i], 0) for i in (0, 1)]
    modes = [_pad_mode(x.shape[1 + i], k[i], s[i], p[i], 1) for i in range(2)]
    pad_code, explicit = _padding(modes)
    if explicit or any(after):
        x, pad_code = _pad(cx, x, p[0], p[1], f"{node.name}_pad",
                           value=float(np.finfo(np.float32).min), after=after), 1
    out = cx.b.tensor(node.name, permuted(ts, NHWC), np.float32, NHWC, x.q)
    cx.b.op("MAX_POOL_2D", [x], [out], "Pool2D", padding=pad_code, strideH=s[0],
            strideW=s[1], filterHeight=k[0], filterWidth=k[1])
    return out if node.target is aten.max_pool2d.default else [out, None]


@nn(aten.max_pool3d_with_indices.default, aten.max_pool3d.default)
def max_pool_3d(cx, node):
    from layerwise.targets.tflite.conv3d import max_pool3d

    return max_pool3d(cx, node)


@nn(aten.avg_pool3d.default)
def avg_pool_3d(cx, node):
    from layerwise.targets.tflite.conv3d import avg_pool3d

    return avg_pool3d(cx, node)


@nn(aten.avg_pool2d.default)
def avg_pool(cx, node):
    a = list(node.args) + [None] * (7 - len(node.args))
    k = _pair(a[1])
    s, p = _pair(a[2], k), _pair(a[3] or 0)
    include_pad = True if a[5] is None else bool(a[5])
    if a[6] is not None:
        raise cx.fail(node, "divisor_override is not supported")
    x = cx.b.relayout(cx.value(a[0]), NHWC)
    if a[4] and any((x.shape[1 + i] + 2 * p[i] - k[i]) % s[i] for i in range(2)):
        raise cx.fail(node, "ceil_mode pooling that changes the output size is not supported")
    modes = [_pad_mode(x.shape[1 + i], k[i], s[i], p[i], 1) for i in range(2)]
    pad_code, explicit = _padding(modes)
    if any(p) and include_pad:
        x, pad_code = _pad(cx, x, p[0], p[1], f"{node.name}_pad"), 1
    elif explicit:
        raise cx.fail(node, "padding that excludes the border from the average differs from "
                      "TFLite's SAME here")
    out = cx.b.tensor(node.name, permuted(cx.shape(node), NHWC), np.float32, NHWC, x.q)
    cx.b.op("AVERAGE_POOL_2D", [x], [out], "Pool2D", padding=pad_code, strideH=s[0],
            strideW=s[1], filterHeight=k[0], filterWidth=k[1])
    return out


@nn(aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default)
def adaptive_avg_pool(cx, node):
    x = cx.b.relayout(cx.value(node.args[0]), NHWC)
    oh, ow = _pair(node.args[1])
    H, W = x.shape[1:3]
    ts = permuted(cx.shape(node), NHWC)
    out = cx.out(node, ts, NHWC)
    if (oh, ow) == (1, 1):
        cx.b.op("MEAN", [x, cx.b.int_const([1, 2], "axes")], [out], "Reducer", keepDims=True)
    elif H % oh == 0 and W % ow == 0:
        cx.b.op("AVERAGE_POOL_2D", [x], [out], "Pool2D", padding=1, strideH=H // oh,
                strideW=W // ow, filterHeight=H // oh, filterWidth=W // ow)
    else:
        raise cx.fail(node, f"adaptive pooling {H}x{W} -> {oh}x{ow} needs uneven windows")
    return out


# ---------------------------------------------------------------- matmul

@nn(aten.addmm.default, aten.mm.default)
def matmul_2d(cx, node):
    if node.target is aten.addmm.default:
        b_arg, x_arg, w_arg = node.args[:3]
    else:
        b_arg, (x_arg, w_arg) = None, node.args[:2]
    if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
        raise cx.fail(node, "addmm with beta or alpha != 1 is not supported")
    out_dim = cx.shape(node)[1]
    bias = None if b_arg is None else np.asarray(cx.concrete(b_arg), np.float64) \
        if cx.is_const(b_arg) else False
    if not cx.is_const(w_arg) or cx.is_const(x_arg) or bias is False or \
            (bias is not None and bias.size != out_dim):
        return _batch_matmul(cx, node, x_arg, w_arg, b_arg)
    W = np.asarray(cx.concrete(w_arg), np.float64).T  # [out, in]
    bias = np.zeros(out_dim) if bias is None else bias.reshape(out_dim)
    chain, act = absorb_activation(cx, node)
    float_out = cx.int8 and cx.float_output(chain[-1])
    # a float head reads a float input as it is (no QUANTIZE round trip)
    x = cx.b.plain(cx.raw(x_arg) if float_out else cx.value(x_arg))
    x, wv, bv = _weights(cx, np.ascontiguousarray(W), bias, x, 0, node.name, x_node=x_arg,
                         float_out=float_out)
    out = cx.out(chain[-1], cx.shape(node), None,
                 q=None if float_out else _output_q(cx, chain[-1], x, wv))
    cx.b.op("FULLY_CONNECTED", [x, wv, bv], [out], "FullyConnected",
            fusedActivationFunction=act)
    bind(cx, chain, out)
    return out


def _batch_matmul(cx, node, x_arg, y_arg, b_arg=None):
    if b_arg is None and cx.is_const(y_arg) and not cx.is_const(x_arg):
        linear = _bmm_as_linear(cx, node, x_arg, y_arg)
        if linear is not None:
            return linear
    x, y = cx.value(x_arg), cx.value(y_arg)
    rank = len(y.shape)
    swap = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    adj_y = y.perm == swap and rank >= 2
    x, y = cx.b.plain(x), (y if adj_y else cx.b.plain(y))
    if x.q is not None and b_arg is not None:
        raise cx.fail(node, "int8 addmm with a computed weight is not supported")
    out = cx.out(node, cx.shape(node), None)
    mm = out if b_arg is None else cx.b.tensor(f"{node.name}_mm", out.shape, out.dtype)
    cx.b.op("BATCH_MATMUL", [x, y], [mm], "BatchMatMul", adjY=bool(adj_y))
    if b_arg is not None:
        R = len(out.shape)
        if cx.is_const(b_arg):
            arr = np.asarray(cx.concrete(b_arg), np.float32)
            bv = cx.b.const(arr.reshape((1,) * (R - arr.ndim) + arr.shape), b_arg.name)
        else:
            bv = cx.b.plain(cx.value(b_arg))
            bv = cx.b.reshape(bv, (1,) * (R - len(bv.shape)) + bv.shape, f"{node.name}_b")
        cx.b.op("ADD", [mm, bv], [out], "Add")
    return out


RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def _bmm_as_linear(cx, node, x_arg, y_arg):
    """bmm(x, a weight expanded over the batch) as FULLY_CONNECTED (timm's linears on 3-d
    inputs), absorbing a following add of a constant [out] bias and a ReLU; None when the
    constant differs across the batch."""
    Y = np.asarray(cx.concrete(y_arg), np.float64)
    if Y.ndim != 3 or not (Y[:1] == Y).all():
        return None
    W = np.ascontiguousarray(Y[0].T)  # [out, in]
    n_out, shape = W.shape[0], cx.shape(node)
    chain, bias = [node], np.zeros(n_out)
    u = cx.sole_user(node)
    while u is not None and u.target in RESHAPES and cx.shape(u) == shape:
        chain.append(u)
        u = cx.sole_user(u)
    if u is not None and u.target is aten.add.Tensor and u.kwargs.get("alpha", 1) == 1 \
            and chain[-1] in u.args[:2]:
        c = u.args[1] if u.args[0] is chain[-1] else u.args[0]
        arr = np.asarray(cx.concrete(c), np.float64) if cx.is_const(c) else None
        if arr is not None and arr.size == n_out and arr.shape[-1:] == (n_out,) \
                and cx.shape(u) == shape:
            bias = arr.reshape(n_out)
            chain.append(u)
    more, act = absorb_activation(cx, chain[-1])
    chain += more[1:]
    last = chain[-1]
    float_out = cx.int8 and cx.float_output(last)
    x = cx.b.plain(cx.raw(x_arg) if float_out else cx.value(x_arg))
    x, wv, bv = _weights(cx, W, bias, x, 0, node.name, float_out=float_out)
    out = cx.out(last, shape, None, q=None if float_out else _output_q(cx, last, x, wv))
    cx.b.op("FULLY_CONNECTED", [x, wv, bv], [out], "FullyConnected",
            fusedActivationFunction=act, keepNumDims=True)
    bind(cx, chain, out)
    return out


@nn(aten.bmm.default)
def bmm(cx, node):
    return _batch_matmul(cx, node, node.args[0], node.args[1])


# ---------------------------------------------------------------- normalization

@nn(aten.native_layer_norm.default)
def layer_norm(cx, node):
    x_arg, shape, w, b, eps = node.args[:5]
    x = cx.value(x_arg)
    if x.q is not None:
        return _layer_norm_int8(cx, node, x)
    R = len(x.shape)
    axes = sorted(x.perm.index(d) for d in range(R - len(shape), R))
    ax = cx.b.int_const(axes, "axes")
    T = lambda tag: cx.b.tensor(f"{node.name}_{tag}", x.shape, x.dtype, x.perm)  # noqa: E731
    red = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    mean = cx.b.tensor(f"{node.name}_mean", red, x.dtype, x.perm)
    cx.b.op("MEAN", [x, ax], [mean], "Reducer", keepDims=True)
    d, sq = T("centered"), T("sq")
    cx.b.op("SUB", [x, mean], [d], "Sub")
    cx.b.op("MUL", [d, d], [sq], "Mul")
    var, inv = (cx.b.tensor(f"{node.name}_{t}", red, x.dtype, x.perm) for t in ("var", "inv"))
    cx.b.op("MEAN", [sq, ax], [var], "Reducer", keepDims=True)
    veps = cx.b.tensor(f"{node.name}_veps", red, x.dtype, x.perm)
    cx.b.op("ADD", [var, cx.b.const(np.asarray(eps, np.float32), "eps")], [veps], "Add")
    cx.b.op("RSQRT", [veps], [inv])
    y = T("norm") if (w is not None or b is not None) else cx.out(node, x.shape, x.perm, None)
    cx.b.op("MUL", [d, inv], [y], "Mul")
    for arg, op in ((w, "MUL"), (b, "ADD")):
        if arg is None:
            continue
        arr = np.asarray(cx.concrete(arg), np.float32)
        arr = arr.reshape((1,) * (R - arr.ndim) + arr.shape).transpose(x.perm)
        nxt = T(op.lower())
        cx.b.op(op, [y, cx.b.const(np.ascontiguousarray(arr), arg.name, perm=x.perm)],
                [nxt], op.capitalize())
        y = nxt
    return [y, None, None]


def _layer_norm_int8(cx, node, x):
    """A layer norm as LiteRT's int8 kernels, each step's int8 range the one calibration
    recorded for it (tflite_calibrate.layer_norm_steps; the output's, its getitem's): in
    torch's layout (normalized axes last,
    flattened to one), MEAN and SUB centre each row, L2_NORMALIZATION divides it by its norm,
    a MUL by sqrt(C) * weight and an ADD of the bias finish it. L2_NORMALIZATION sums the
    squares in int32; per-tensor int8 squares (SQUARED_DIFFERENCE, MEAN, RSQRT, as TFLite's
    converter writes it) zero most of them, as their spread is the square of the rows'.
    Assumes eps is far below the rows' variance (it is dropped)."""
    from layerwise.targets.tflite.graph import qparams_for_range

    _, shape, w, b = node.args[:4]

    out_node = next(u for u in node.users if u.target is operator.getitem and u.args[1] == 0)

    def t(step, shp):
        key = out_node.name if step == "out" else f"{node.name}.{step}"
        if key not in cx.ranges:
            raise cx.fail(node, f"has no calibrated range for its int8 {step} (calibrate with "
                          "tflite_calibrate.calibrate_ranges, which records a layer norm's steps)")
        return cx.b.tensor(f"{node.name}_{step}", shp, x.dtype, None,
                           qparams_for_range(*cx.ranges[key]))

    torch_shape = x.torch_shape
    k = len(shape)
    rows = (*torch_shape[:-k], int(np.prod(torch_shape[-k:])))
    x = cx.b.reshape(cx.b.plain(x), rows, f"{node.name}_rows")
    mean, d = t("mean", (*rows[:-1], 1)), t("centered", rows)
    cx.b.op("MEAN", [x, cx.b.int_const([len(rows) - 1], "axes")], [mean], "Reducer",
            keepDims=True)
    cx.b.op("SUB", [x, mean], [d], "Sub")
    unit = cx.b.tensor(f"{node.name}_unit", rows, x.dtype, None, QParams((1 / 128,), (0,)))
    cx.b.op("L2_NORMALIZATION", [d], [unit], "L2Norm")
    gain = np.full(rows[-1], np.sqrt(rows[-1]), np.float32)
    if w is not None:
        gain *= np.asarray(cx.concrete(w), np.float32).reshape(-1)
    y = t("out" if b is None else "scaled" if w is not None else "norm", rows)
    cx.b.op("MUL", [unit, cx.const_tensor(gain, f"{node.name}_gain")], [y], "Mul")
    if b is not None:
        out = t("out", rows)
        bias = np.asarray(cx.concrete(b), np.float32).reshape(-1)
        cx.b.op("ADD", [y, cx.const_tensor(bias, b.name)], [out], "Add")
        y = out
    return [cx.b.reshape(y, torch_shape, f"{node.name}_out_shaped"), None, None]


@nn(aten._native_batch_norm_legit_no_training.default)
def batch_norm(cx, node):
    x = cx.value(node.args[0])
    if x.q is not None:
        raise cx.fail(node, "a batch norm not after a convolution is not supported in int8")
    w, b, mean, var = (None if a is None else np.asarray(cx.concrete(a), np.float64)
                       for a in node.args[1:5])
    scale = (w if w is not None else 1.0) / np.sqrt(var + float(node.args[6]))
    shift = (b if b is not None else 0.0) - mean * scale
    R = len(x.shape)
    shape = (1, -1) + (1,) * (R - 2)
    y = x
    for arr, op in ((scale, "MUL"), (shift, "ADD")):
        c = np.ascontiguousarray(arr.astype(np.float32).reshape(shape).transpose(x.perm))
        nxt = cx.b.tensor(f"{node.name}_{op.lower()}", x.shape, x.dtype, x.perm)
        cx.b.op(op, [y, cx.b.const(c, f"{node.name}_{op.lower()}_c", perm=x.perm)], [nxt],
                op.capitalize())
        y = nxt
    return [y, None, None]
