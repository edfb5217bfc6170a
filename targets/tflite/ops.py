"""ATen -> TFLite converters for elementwise, shape, reduction and indexing ops.

Each converter is `fn(cx, node) -> Value | list` with `cx` the `tflite.Lowering`; the table
`OPS` here (with `tflite_nn.NN`, merged by `tflite.Lowering.run`) maps an ATen overload to its
converter.
Converters keep the input's layout where the op allows (elementwise, reductions, slices,
concat on a mapped axis) and ask for torch's own order only where it matters (reshape).
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from layerwise.targets.tflite.graph import TYPES, QParams, Value, identity

aten = torch.ops.aten
OPS: dict = {}


def registrar(table: dict):
    """A decorator registering a converter in `table` for each ATen target (no duplicates)."""
    def reg(*targets):
        def deco(fn):
            for t in targets:
                assert t not in table, t
                table[t] = fn
            return fn
        return deco
    return reg


reg = registrar(OPS)


def dims_of(dims, rank: int) -> list[int]:
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(rank))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted(d % rank if rank else 0 for d in dims)


def drop_axes(perm, dropped) -> tuple[int, ...]:
    """perm of a tensor after removing torch axes `dropped` (renumbered)."""
    return tuple(p - sum(d < p for d in dropped) for p in perm if p not in dropped)


# ---------------------------------------------------------------- broadcasting helpers

def cast(cx, v: Value, dtype, name: str) -> Value:
    dtype = np.dtype(dtype)
    if v.dtype == dtype:
        return v
    out = cx.b.tensor(name, v.shape, dtype, v.perm)
    cx.b.op("CAST", [v], [out], "Cast", inDataType=TYPES[v.dtype], outDataType=TYPES[dtype])
    return out


def broadcast(cx, node, args, dtypes, q: QParams | None = None
              ) -> tuple[list[Value], tuple[int, ...]]:
    """Operands of an elementwise op, each of `dtypes[i]`, in one common layout; returns them
    with the layout (torch broadcasting: leading 1s for lower ranks). `q`: int8 parameters
    every float operand is given (constants quantized with, tensors requantized to)."""
    R = len(cx.shape(node))
    vals = [None if cx.is_const(a) else cx.value(a) for a in args]
    # the largest operand's layout (a non-torch one on ties): the others are moved to it
    full = [v for v in vals if v is not None and len(v.shape) == R]
    perm = max(full, key=lambda v: (int(np.prod(v.shape)), v.perm != identity(R))).perm \
        if full else identity(R)
    shapes = [np.shape(cx.concrete(a)) for a in args]
    out = []
    for i, (a, v, dt) in enumerate(zip(args, vals, dtypes)):
        shared = q if np.dtype(dt).kind == "f" else None
        if v is None:
            arr = np.asarray(cx.concrete(a)).astype(dt)
            if arr.size > 1 and (arr == arr.flat[0]).all() and np.broadcast_shapes(
                    *shapes[:i], *shapes[i + 1:], ()) == cx.shape(node):
                arr = arr.flat[0].reshape(())  # a filled constant (full_like): one scalar
            if arr.ndim:
                arr = np.ascontiguousarray(
                    arr.reshape((1,) * (R - arr.ndim) + arr.shape).transpose(perm))
            name, p = getattr(a, "name", "const"), perm if arr.ndim else None
            out.append(cx.b.const(arr, name, q=shared, perm=p) if shared is not None else
                       cx.const_tensor(arr, name, perm=p))
            continue
        v = cast(cx, v, dt, f"{node.name}_cast")
        if len(v.shape) < R:
            v = cx.b.plain(v)
            v = cx.b.reshape(v, (1,) * (R - len(v.shape)) + v.shape, f"{node.name}_rank")
        laid = cx.b.relayout(v, perm)
        out.append(cx.b.requantize(laid, shared, f"{node.name}_rq") if shared else laid)
    return out, perm


def permuted(shape, perm) -> tuple[int, ...]:
    return tuple(shape[p] for p in perm)


# ---------------------------------------------------------------- elementwise

BINARY = {
    aten.add.Tensor: "ADD", aten.add.Scalar: "ADD", aten.sub.Tensor: "SUB",
    aten.sub.Scalar: "SUB", aten.mul.Tensor: "MUL", aten.mul.Scalar: "MUL",
    aten.div.Tensor: "DIV", aten.div.Scalar: "DIV", aten.maximum.default: "MAXIMUM",
    aten.minimum.default: "MINIMUM", aten.pow.Tensor_Tensor: "POW",
    aten.eq.Tensor: "EQUAL", aten.eq.Scalar: "EQUAL", aten.ne.Tensor: "NOT_EQUAL",
    aten.ne.Scalar: "NOT_EQUAL", aten.lt.Tensor: "LESS", aten.lt.Scalar: "LESS",
    aten.le.Tensor: "LESS_EQUAL", aten.le.Scalar: "LESS_EQUAL", aten.gt.Tensor: "GREATER",
    aten.gt.Scalar: "GREATER", aten.ge.Tensor: "GREATER_EQUAL", aten.ge.Scalar: "GREATER_EQUAL",
    aten.logical_and.default: "LOGICAL_AND", aten.bitwise_and.Tensor: "LOGICAL_AND",
    aten.logical_or.default: "LOGICAL_OR", aten.bitwise_or.Tensor: "LOGICAL_OR",
    aten.remainder.Scalar: "FLOOR_MOD", aten.remainder.Tensor: "FLOOR_MOD",
    aten.floor_divide.default: "FLOOR_DIV",
}
# ops whose inputs broadcast (a view feeding only these needs no explicit shape)
BROADCASTING = set(BINARY) | {aten.where.self}
FUSABLE = {"ADD": "Add", "SUB": "Sub", "MUL": "Mul", "DIV": "Div"}
COMPARE = {"EQUAL", "NOT_EQUAL", "LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL"}
NEGATED = {"EQUAL": "NOT_EQUAL", "NOT_EQUAL": "EQUAL"}  # exact with NaN too


@reg(*BINARY)
def binary(cx, node):
    from layerwise.targets.tflite.fuse import absorb_activation, match_hardswish

    name = BINARY[node.target]
    a, b = node.args[0], node.args[1]
    if node.kwargs.get("rounding_mode") is not None:
        raise cx.fail(node, "integer division modes are not supported")
    if name in ("LOGICAL_AND", "LOGICAL_OR") and cx.dtype(node) != np.bool_:
        raise cx.fail(node, "bitwise ops on integers are not supported")
    alpha = node.kwargs.get("alpha", 1)
    if alpha != 1:
        if not cx.is_const(b):
            raise cx.fail(node, "alpha != 1 on a tensor operand")
        b = np.asarray(cx.concrete(b)) * alpha
    if name == "ADD" and (hs := match_hardswish(cx, node)) is not None:
        return hs
    out_dt = cx.dtype(node)
    if name == "DIV" and out_dt.kind == "f" and cx.is_const(b):
        name, b = "MUL", 1.0 / np.asarray(cx.concrete(b), np.float64)
    if name in COMPARE or name.startswith("LOGICAL"):
        ref = a if not cx.is_const(a) else b
        dt = cx.dtype(ref) if isinstance(ref, torch.fx.Node) else out_dt
        dts, chain, act = [dt, dt], [node], 0
        u = cx.sole_user(node)
        if name in NEGATED and u is not None and u.target is aten.logical_not.default:
            name, chain = NEGATED[name], [node, u]  # one op, not two on a large bool tensor
    else:
        dts = [out_dt, out_dt]
        chain, act = absorb_activation(cx, node) if name in FUSABLE else ([node], 0)
    ops, perm = broadcast(cx, node, [a, b], dts)
    out = cx.out(chain[-1], permuted(cx.shape(node), perm), perm)
    if name in FUSABLE:
        cx.b.op(name, ops, [out], FUSABLE[name], fusedActivationFunction=act)
    else:
        cx.b.op(name, ops, [out])
    for n in chain:
        cx.env[n] = out
    return out


@reg(aten.where.self)
def where(cx, node):
    dt = cx.dtype(node)
    q = cx.qparams(node)
    if q is not None:  # SELECT_V2 copies int8 values: both sides and the result share q
        vals = [cx.value(a) for a in node.args[1:3] if not cx.is_const(a)]
        q = next((v.q for v in vals if v.q is not None), q)
    ops, perm = broadcast(cx, node, list(node.args), [np.bool_, dt, dt], q)
    out = cx.out(node, permuted(cx.shape(node), perm), perm, q=q)
    cx.b.op("SELECT_V2", ops, [out])
    return out


UNARY = {
    aten.relu.default: "RELU", aten.sigmoid.default: "LOGISTIC", aten.tanh.default: "TANH",
    aten.exp.default: "EXP", aten.log.default: "LOG", aten.sqrt.default: "SQRT",
    aten.rsqrt.default: "RSQRT", aten.neg.default: "NEG", aten.abs.default: "ABS",
    aten.logical_not.default: "LOGICAL_NOT", aten.hardswish.default: "HARD_SWISH",
    aten.sin.default: "SIN", aten.cos.default: "COS", aten.floor.default: "FLOOR",
    aten.ceil.default: "CEIL", aten.sign.default: "SIGN",
    aten.bitwise_not.default: "LOGICAL_NOT",  # of bool only (DeBERTa's masks)
}
# int8 outputs these kernels require
FIXED_Q = {"LOGISTIC": QParams((1 / 256,), (-128,)), "TANH": QParams((1 / 128,), (0,)),
           "SOFTMAX": QParams((1 / 256,), (-128,))}


@reg(*UNARY)
def unary(cx, node):
    name = UNARY[node.target]
    x = cx.value(node.args[0])
    if node.target is aten.bitwise_not.default and x.dtype != np.bool_:
        raise cx.fail(node, f"bitwise_not of {x.dtype} is not supported (only of bool)")
    q = FIXED_Q.get(name) if cx.int8 else "node"
    return cx.b.unary(name, x, node.name, q=cx.qparams(node) if q == "node" else q)


@reg(aten.leaky_relu.default)
def leaky_relu(cx, node):
    """LEAKY_RELU with torch's slope (0.01 by default; CSPDarkNet's 0.1)."""
    x = cx.value(node.args[0])
    alpha = float(node.args[1]) if len(node.args) > 1 else 0.01
    out = cx.out(node, x.shape, x.perm)
    cx.b.op("LEAKY_RELU", [x], [out], "LeakyRelu", alpha=alpha)
    return out


@reg(aten.gelu.default)
def gelu(cx, node):
    x = cx.value(node.args[0])
    approx = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
    return cx.b.unary("GELU", x, node.name, cx.qparams(node), "Gelu",
                      approximate=approx == "tanh")


@reg(aten.pow.Tensor_Scalar)
def pow_scalar(cx, node):
    x, e = cx.value(node.args[0]), float(node.args[1])
    q = cx.qparams(node)
    if e == 1.0:
        return x
    if e == 2.0:
        out = cx.out(node, x.shape, x.perm)
        cx.b.op("MUL", [x, x], [out], "Mul")
        return out
    if e in (0.5, -0.5):
        return cx.b.unary("SQRT" if e > 0 else "RSQRT", x, node.name, q)
    out = cx.out(node, x.shape, x.perm)
    cx.b.op("POW", [x, cx.const_tensor(np.asarray(e, np.float32))], [out])
    return out


@reg(aten.hardtanh.default, aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)
def clamp(cx, node):
    from layerwise.targets.tflite.fuse import ACT, clamp_bounds

    lo, hi, chain = clamp_bounds(cx, node)
    last = chain[-1]
    x = cx.value(node.args[0])
    name = ACT.get((lo, hi))
    if name is not None:
        x = cx.b.unary(name, x, last.name, cx.qparams(last))
    else:
        for op, bound in (("MAXIMUM", lo), ("MINIMUM", hi)):
            if bound is not None:
                c = cx.const_tensor(np.asarray(bound, x.dtype))
                out = cx.out(last, x.shape, x.perm)
                cx.b.op(op, [x, c], [out])
                x = out
    for n in chain:
        cx.env[n] = x
    return x


@reg(aten._to_copy.default)
def to_copy(cx, node):
    x = cx.value(node.args[0])
    dt = cx.dtype(node)
    if dt.kind == "f" and x.dtype.kind == "f":
        return x
    if cx.int8 and dt.kind == "f" and x.q is None and x.dtype.kind in "iub":
        lo, hi = cx.ranges.get(node.name, (np.inf, -np.inf))
        if not -128 <= lo <= hi <= 127:
            raise cx.fail(node, f"a cast into float of values in [{lo}, {hi}] does not fit "
                          "int8 (scale 1)")
        out = cx.b.tensor(node.name, x.shape, dt, x.perm, QParams((1.0,), (0,)))
        cx.b.op("CAST", [x], [out], "Cast", inDataType=TYPES[x.dtype],
                outDataType=TYPES[np.dtype(np.int8)])
        return out
    if cx.int8 and (dt.kind == "f" or x.q is not None):
        raise cx.fail(node, "casts to or from float are not supported in int8")
    return cast(cx, x, dt, node.name)


@reg(aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default,
     aten.contiguous.default, aten.dropout.default)
def alias(cx, node):
    return cx.value(node.args[0])


@reg(operator.getitem)
def getitem(cx, node):
    src = cx.env.get(node.args[0])
    v = src[node.args[1]] if isinstance(src, (list, tuple)) else None
    if v is None:
        raise cx.fail(node, f"output {node.args[1]} of {node.args[0].target} is not supported")
    return v


# ---------------------------------------------------------------- shapes and layout

def _new_shape(cx, node, shape):
    """Reshape target with -1 where the graph's symbolic batch dimension is."""
    val = node.meta.get("val")
    sym = [i for i, d in enumerate(getattr(val, "shape", ())) if not isinstance(d, int)]
    if len(sym) != 1:
        return None
    shape = list(shape)
    shape[sym[0]] = -1
    return shape


@reg(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def reshape(cx, node):
    x = cx.value(node.args[0])
    shape = cx.shape(node)
    kept = _prefix_reshape(x, shape) if _new_shape(cx, node, shape) is None else None
    if kept is not None:  # only leading axes in torch order change: no TRANSPOSE
        return cx.b.reshape(x, kept[0], node.name, kept[1])
    x = cx.b.plain(x)
    if shape == x.shape:
        return x
    return cx.b.reshape(x, shape, node.name, None, _new_shape(cx, node, shape))


def _prefix_reshape(x: Value, shape) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(tflite shape, perm) of `x` reshaped to torch `shape` in x's own layout, when x's
    permuted axes are trailing ones the reshape keeps (a transposed key [B, H, D, S] viewed
    as [B*H, D, S]); None otherwise."""
    rank = len(x.perm)
    k = 0
    while k < rank and x.perm[k] == k:
        k += 1
    tail = rank - k
    if k == rank or len(shape) < tail or tuple(shape[len(shape) - tail:]) != \
            x.torch_shape[k:]:
        return None
    lead = len(shape) - tail
    perm = identity(lead) + tuple(lead + p - k for p in x.perm[k:])
    return tuple(shape[:lead]) + x.shape[k:], perm


@reg(aten.as_strided.default)
def as_strided(cx, node):
    """Only the as_strided that is a reshape: offset 0, a contiguous input, the same number of
    elements, contiguous strides on every axis longer than 1 (pooling to 1x1 writes these)."""
    src = node.args[0]
    size, stride = list(cx.shape(node)), list(node.args[2])
    offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset", 0)
    val = src.meta.get("val") if hasattr(src, "meta") else None
    want, acc = [], 1
    for d in reversed(size):
        want.insert(0, acc)
        acc *= d
    if offset or val is None or not val.is_contiguous() or acc != val.numel() or any(
            d > 1 and int(st) != w for d, st, w in zip(size, stride, want)):
        raise cx.fail(node, "only an as_strided that reshapes a contiguous tensor is supported")
    x = cx.b.plain(cx.value(src))
    return x if tuple(size) == x.shape else cx.b.reshape(x, size, node.name)


@reg(aten.permute.default)
def permute(cx, node):
    x = cx.value(node.args[0])
    p = [d % len(x.shape) for d in node.args[1]]
    return Value(x.index, x.shape, tuple(p.index(q) for q in x.perm), x.dtype, x.q)


@reg(aten.t.default)
def transpose_2d(cx, node):
    x = cx.value(node.args[0])
    if len(x.shape) < 2:
        return x
    return Value(x.index, x.shape, tuple(1 - p for p in x.perm), x.dtype, x.q)


@reg(aten.squeeze.dims, aten.squeeze.dim, aten.squeeze.default)
def squeeze(cx, node):
    x = cx.value(node.args[0])
    ts = x.torch_shape
    dims = dims_of(node.args[1] if len(node.args) > 1 else None, len(ts))
    dims = [d for d in dims if ts[d] == 1]
    if not dims:
        return x
    perm = drop_axes(x.perm, dims)
    shape = tuple(s for s, p in zip(x.shape, x.perm) if p not in dims)
    return cx.b.reshape(x, shape, node.name, perm)


@reg(aten.unsqueeze.default)
def unsqueeze(cx, node):
    x = cx.value(node.args[0])
    d = node.args[1] % (len(x.shape) + 1)
    if x.perm == identity(len(x.shape)):
        shape = x.shape[:d] + (1,) + x.shape[d:]
        return cx.b.reshape(x, shape, node.name)
    perm = tuple(p + (p >= d) for p in x.perm) + (d,)
    return cx.b.reshape(x, x.shape + (1,), node.name, perm)


@reg(aten.expand.default)
def expand(cx, node):
    x = cx.value(node.args[0])
    shape = cx.shape(node)
    if x.torch_shape == shape or all(u.target in BROADCASTING for u in node.users):
        return x
    # TILE, not BROADCAST_TO: LiteRT's BROADCAST_TO copies element by element (a GQA
    # repeat_kv of a 256-row cache took 1.1 ms where TILE takes 0.01 ms)
    x = cx.b.plain(x)
    if len(x.shape) < len(shape):
        x = cx.b.reshape(x, (1,) * (len(shape) - len(x.shape)) + x.shape, f"{node.name}_rank")
    out = cx.b.tensor(node.name, shape, x.dtype, None, x.q)
    cx.b.op("TILE", [x, cx.b.int_const([o // i for o, i in zip(shape, x.shape)], "multiples")],
            [out])
    return out


@reg(aten.slice.Tensor)
def slice_(cx, node):
    x = cx.value(node.args[0])
    ts = x.torch_shape
    args = list(node.args) + [None] * (5 - len(node.args))
    dim = (args[1] or 0) % len(ts)
    size = ts[dim]
    start, end, step = args[2] or 0, args[3], args[4] or 1
    start = max(0, start + size if start < 0 else min(start, size))
    end = size if end is None else (end + size if end < 0 else min(end, size))
    if start == 0 and end == size and step == 1:
        return x
    return _strided(cx, node, x, {dim: (start, end, step)}, shrink=())


@reg(aten.slice_scatter.default)
def slice_scatter(cx, node):
    """dst with dst[start:end] along dim replaced by src (step 1): the kept head and tail of
    dst and src, concatenated (GhostNet writes its cheap features into a slice)."""
    args = list(node.args) + [None] * (6 - len(node.args))
    x = cx.value(args[0])
    ts = cx.shape(node)
    dim = (args[2] or 0) % len(ts)
    start, end, step = slice(args[3], args[4], args[5] or 1).indices(ts[dim])
    if step != 1:
        raise cx.fail(node, "a slice_scatter with a step is not supported")
    q = cx.qparams(node)
    parts = []
    if start > 0:
        parts.append(_strided(cx, node, x, {dim: (0, start, 1)}, (), f"{node.name}_head"))
    parts.append(cx.b.relayout(cx.value(args[1]), x.perm))
    if end < ts[dim]:
        parts.append(_strided(cx, node, x, {dim: (end, ts[dim], 1)}, (), f"{node.name}_tail"))
    parts = [cx.b.requantize(p, q, f"{node.name}_rq") for p in parts]
    out = cx.out(node, permuted(ts, x.perm), x.perm, q=q)
    cx.b.op("CONCATENATION", parts, [out], "Concatenation", axis=x.perm.index(dim))
    return out


@reg(aten.select.int)
def select(cx, node):
    x = cx.value(node.args[0])
    ts = x.torch_shape
    dim = node.args[1] % len(ts)
    i = node.args[2] % ts[dim]
    return _strided(cx, node, x, {dim: (i, i + 1, 1)}, shrink=(dim,))


def _strided(cx, node, x, spans, shrink, name=None):
    begin, end, strides, shape, mask = [], [], [], [], 0
    for ax, p in enumerate(x.perm):
        s, e, st = spans.get(p, (0, x.shape[ax], 1))
        begin.append(s), end.append(e), strides.append(st)
        if p in shrink:
            mask |= 1 << ax
        else:
            shape.append(len(range(s, e, st)))
    perm = drop_axes(x.perm, shrink)
    out = cx.b.tensor(name or node.name, shape, x.dtype, perm, x.q)
    cx.b.op("STRIDED_SLICE", [x, cx.b.int_const(begin), cx.b.int_const(end),
                              cx.b.int_const(strides)], [out], "StridedSlice",
            shrinkAxisMask=mask)
    return out


@reg(aten.split_with_sizes.default, aten.split.Tensor)
def split(cx, node):
    x = cx.value(node.args[0])
    ts = x.torch_shape
    dim = (node.args[2] if len(node.args) > 2 else 0) % len(ts)
    sizes = node.args[1]
    if isinstance(sizes, int):
        sizes = [min(sizes, ts[dim] - s) for s in range(0, ts[dim], sizes)]
    outs, start = [], 0
    for i, s in enumerate(sizes):
        outs.append(_strided(cx, node, x, {dim: (start, start + s, 1)}, (), f"{node.name}_{i}"))
        start += s
    return outs


@reg(aten.cat.default)
def cat(cx, node):
    items = [a for a in node.args[0] if not cx.is_const(a) or
             np.asarray(cx.concrete(a)).size]
    rank = len(cx.shape(node))
    dim = (node.args[1] if len(node.args) > 1 else 0) % rank
    vals = [None if cx.is_const(a) else cx.value(a) for a in items]
    perm = next((v.perm for v in vals if v is not None), identity(rank))
    q = cx.qparams(node)
    ops = []
    for a, v in zip(items, vals):
        if v is None:
            arr = np.ascontiguousarray(np.asarray(cx.concrete(a)).astype(cx.dtype(node))
                                       .transpose(perm))
            v = cx.b.const(arr, a.name, q=q, perm=perm) if q is not None else \
                cx.b.const(arr, a.name, perm=perm)
        ops.append(cx.b.requantize(cx.b.relayout(v, perm), q, f"{node.name}_rq"))
    out = cx.out(node, permuted(cx.shape(node), perm), perm, q=q)
    cx.b.op("CONCATENATION", ops, [out], "Concatenation", axis=perm.index(dim))
    return out


@reg(aten.constant_pad_nd.default)
def pad(cx, node):
    x = cx.value(node.args[0])
    spec = list(node.args[1])
    value = float(node.args[2]) if len(node.args) > 2 else 0.0
    rank = len(x.shape)
    torch_pads = [[0, 0] for _ in range(rank)]
    for i in range(len(spec) // 2):
        torch_pads[rank - 1 - i] = [spec[2 * i], spec[2 * i + 1]]
    if any(p < 0 for pr in torch_pads for p in pr):
        raise cx.fail(node, "negative padding is not supported")
    pads = np.asarray([torch_pads[p] for p in x.perm], np.int32)
    out = cx.b.tensor(node.name, permuted(cx.shape(node), x.perm), x.dtype, x.perm, x.q)
    if (value == 0.0 and x.q is None) or (x.q is not None and value == 0.0):
        cx.b.op("PAD", [x, cx.b.const(pads, "pads")], [out])
    else:
        c = cx.b.const(np.asarray(value, x.dtype), "pad_value", q=x.q)
        cx.b.op("PADV2", [x, cx.b.const(pads, "pads"), c], [out])
    return out


# ---------------------------------------------------------------- reductions

REDUCE = {aten.mean.dim: "MEAN", aten.sum.dim_IntList: "SUM", aten.amax.default: "REDUCE_MAX",
          aten.amin.default: "REDUCE_MIN", aten.any.dim: "REDUCE_ANY",
          aten.any.dims: "REDUCE_ANY", aten.prod.dim_int: "REDUCE_PROD"}


@reg(*REDUCE)
def reduce(cx, node):
    x = cx.value(node.args[0])
    rank = len(x.shape)
    dims = dims_of(node.args[1] if len(node.args) > 1 else None, rank)
    keep = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim"))
    if node.kwargs.get("dtype") is not None and np.dtype(
            str(node.kwargs["dtype"]).removeprefix("torch.")) != x.dtype:
        raise cx.fail(node, "reductions with a dtype change are not supported")
    perm = x.perm if keep else drop_axes(x.perm, dims)
    out = cx.out(node, permuted(cx.shape(node), perm), perm)
    axes = cx.b.int_const(sorted(x.perm.index(d) for d in dims), "axes")
    cx.b.op(REDUCE[node.target], [x, axes], [out], "Reducer", keepDims=keep)
    return out


@reg(aten.argmax.default)
def argmax(cx, node):
    x = cx.value(node.args[0])
    if len(node.args) < 2 or node.args[1] is None or (len(node.args) > 2 and node.args[2]):
        raise cx.fail(node, "argmax needs a dim and keepdim=False")
    dim = node.args[1] % len(x.shape)
    perm = drop_axes(x.perm, [dim])
    out = cx.out(node, permuted(cx.shape(node), perm), perm)
    from layerwise.targets.tflite.graph import TYPES

    cx.b.op("ARG_MAX", [x, cx.b.int_const([x.perm.index(dim)], "axis")], [out], "ArgMax",
            outputType=TYPES[out.dtype])
    return out


@reg(aten._softmax.default, aten._log_softmax.default)
def softmax(cx, node):
    x = cx.value(node.args[0])
    dim = node.args[1] % len(x.shape)
    x = cx.b.relayout(x, tuple(p for p in x.perm if p != dim) + (dim,))
    if node.target is aten._softmax.default:
        q = FIXED_Q["SOFTMAX"] if cx.int8 else None
        return cx.b.unary("SOFTMAX", x, node.name, q, "Softmax", beta=1.0)
    q = QParams((16 / 256,), (127,)) if cx.int8 else None
    return cx.b.unary("LOG_SOFTMAX", x, node.name, q)


# ---------------------------------------------------------------- indexing

@reg(aten.embedding.default)
def embedding(cx, node):
    w, ids = node.args[0], node.args[1]
    if not cx.is_const(w):
        raise cx.fail(node, "the embedding table must be a constant")
    table = cx.value(w)
    idx = cx.b.plain(cx.value(ids))
    out = cx.b.tensor(node.name, cx.shape(node), table.dtype, None, table.q)
    cx.b.op("GATHER", [table, idx], [out], "Gather", axis=0)
    return out


@reg(aten.index.Tensor)
def index(cx, node):
    src, indices = node.args[0], list(node.args[1])
    if any(i is None for i in indices):
        raise cx.fail(node, "indexing with None (slices between indices) is not supported")
    if all(cx.is_const(i) for i in indices) and not cx.is_const(src):
        grids = np.broadcast_arrays(*[np.asarray(cx.concrete(i)) for i in indices])
        idx = np.stack(grids, axis=-1).astype(np.int32)
        x = cx.b.plain(cx.value(src))
        out = cx.b.tensor(node.name, cx.shape(node), x.dtype, None, x.q)
        cx.b.op("GATHER_ND", [x, cx.b.const(idx, f"{node.name}_idx")], [out])
        return out
    if len(indices) == 1 and cx.is_const(src):
        table = cx.value(src)
        out = cx.b.tensor(node.name, cx.shape(node), table.dtype, None, table.q)
        cx.b.op("GATHER", [table, cx.b.plain(cx.value(indices[0]))], [out], "Gather", axis=0)
        return out
    return _index_nd(cx, node, src, indices)


def _index_nd(cx, node, src, indices):
    """x[i0, i1, ...] with run-time indices (CLIP pools its text at each row's argmax): the
    indices, broadcast to one shape, stacked as GATHER_ND coordinates."""
    shapes = [tuple(np.shape(cx.concrete(i))) for i in indices]
    common = np.broadcast_shapes(*shapes)
    parts = []
    for k, (i, shape) in enumerate(zip(indices, shapes)):
        if cx.is_const(i):
            a = np.broadcast_to(np.asarray(cx.concrete(i)), common).astype(np.int32)
            parts.append(cx.b.const(np.ascontiguousarray(a[..., None]), f"{node.name}_i{k}"))
            continue
        if shape != common:
            raise cx.fail(node, "run-time indices of different shapes are not supported")
        v = cast(cx, cx.b.plain(cx.value(i)), np.int32, f"{node.name}_i{k}_32")
        parts.append(cx.b.reshape(v, (*common, 1), f"{node.name}_i{k}_col"))
    coords = cx.b.tensor(f"{node.name}_coords", (*common, len(indices)), np.int32)
    cx.b.op("CONCATENATION", parts, [coords], "Concatenation", axis=len(common))
    x = cx.b.plain(cx.value(src))
    out = cx.out(node, cx.shape(node), identity(len(cx.shape(node))), q=x.q)
    cx.b.op("GATHER_ND", [x, coords], [out])
    return out
