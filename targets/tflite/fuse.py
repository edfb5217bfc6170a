"""Activation chains the TFLite lowering fuses into the op before them: a clamp's bounds
(hardtanh, clamp, clamp_min/max, chained), a ReLU or clamp absorbed as a fused activation
code, and the x * relu6(x + 3) / 6 pattern as one HARD_SWISH."""

from __future__ import annotations

import numpy as np
import torch

aten = torch.ops.aten

# clamp bounds -> LiteRT's activation names; the names with a fused-activation code
ACT = {(0.0, 6.0): "RELU6", (0.0, None): "RELU", (-1.0, 1.0): "RELU_N1_TO_1",
       (0.0, 1.0): "RELU_0_TO_1"}
ACT_CODES = {"RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}
CLAMPS = {aten.hardtanh.default, aten.clamp.default, aten.clamp_min.default,
          aten.clamp_max.default}


def _num(x, want: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and float(x) == want


# ---------------------------------------------------------------- fusion matchers

def clamp_bounds(cx, node):
    """(lo, hi, chain) of a clamp-like node, merging a following clamp(max=6) into
    clamp(min=0) (how ReLU6 arrives decomposed); chain[-1] is the last node absorbed."""
    t, a = node.target, list(node.args) + [None, None]
    if t is aten.hardtanh.default:
        lo, hi = (a[1] if a[1] is not None else -1.0), (a[2] if a[2] is not None else 1.0)
    elif t is aten.clamp.default:
        lo, hi = a[1], a[2]
    elif t is aten.clamp_min.default:
        lo, hi = a[1], None
    else:
        lo, hi = None, a[1]
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    chain = [node]
    u = cx.sole_user(node)
    if lo == 0.0 and hi is None and u is not None and u.target in CLAMPS and u.args[0] is node:
        lo2, hi2, more = clamp_bounds(cx, u)
        if lo2 is None and hi2 == 6.0:
            hi, chain = 6.0, chain + more
    return lo, hi, chain


def absorb_activation(cx, node):
    """(chain, code): node plus a following ReLU-family activation folded into it."""
    if cx.dtype(node).kind != "f":
        return [node], 0
    u = cx.sole_user(node)
    if u is None or not u.args or u.args[0] is not node:
        return [node], 0
    if u.target is aten.relu.default:
        return [node, u], ACT_CODES["RELU"]
    if u.target in CLAMPS:
        lo, hi, chain = clamp_bounds(cx, u)
        name = ACT.get((lo, hi))
        if name in ACT_CODES:
            return [node, *chain], ACT_CODES[name]
    return [node], 0


def match_hardswish(cx, node):
    """HARD_SWISH for add(x, 3) -> clamp(0, 6) -> mul(x, .) -> div(., 6), else None."""
    x, c = node.args[0], node.args[1]
    if not isinstance(x, torch.fx.Node) or cx.is_const(x) or not _num(c, 3.0):
        return None
    u = cx.sole_user(node)
    if u is None or u.target not in CLAMPS or u.args[0] is not node:
        return None
    lo, hi, chain = clamp_bounds(cx, u)
    m = cx.sole_user(chain[-1])
    if (lo, hi) != (0.0, 6.0) or m is None or m.target is not aten.mul.Tensor \
            or set(m.args[:2]) != {x, chain[-1]}:
        return None
    d = cx.sole_user(m)
    if d is None or d.target not in (aten.div.Tensor, aten.div.Scalar) or d.args[0] is not m \
            or not _num(d.args[1], 6.0):
        return None
    out = cx.b.unary("HARD_SWISH", cx.value(x), d.name, cx.qparams(d))
    for n in [node, *chain, m, d]:
        cx.env[n] = out
    return out


def absorb_batchnorm(cx, node):
    """(chain, (scale, shift) | None): an inference batch norm right after node."""
    u = cx.sole_user(node)
    if u is None or u.target is not aten._native_batch_norm_legit_no_training.default \
            or u.args[0] is not node:
        return [node], None
    w, b, mean, var = u.args[1:5]
    eps = float(u.args[6])
    if not all(cx.is_const(a) for a in (w, b, mean, var)):
        return [node], None
    gets = list(u.users)
    if len(gets) != 1 or gets[0].args[1] != 0:
        return [node], None
    mean = np.asarray(cx.concrete(mean), np.float64)
    scale = 1.0 / np.sqrt(np.asarray(cx.concrete(var), np.float64) + eps)
    if w is not None:
        scale = scale * np.asarray(cx.concrete(w), np.float64)
    shift = -mean * scale + (np.asarray(cx.concrete(b), np.float64) if b is not None else 0.0)
    return [node, u, gets[0]], (scale, shift)


def bind(cx, chain, out):
    """Every node of a fused chain reads as `out` (a batch norm as its output triple)."""
    for n in chain:
        cx.env[n] = [out, None, None] if n.target is \
            aten._native_batch_norm_legit_no_training.default else out
