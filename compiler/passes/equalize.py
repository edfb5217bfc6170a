"""`equalize`: cross-layer range equalization on the IR, ahead of static int8 for every
target whose recipe asks for it (onnx, openvino, tflite) — Nagel et al. 2019, "Data-Free
Quantization", section 4.1, with measured ranges in place of the weights' ranges.

Per-tensor int8 activations fit one scale to all channels of a tensor; where the channels of
a ReLU6 output span very different ranges (MobileNetV2) the small channels keep a few levels
only. Where conv A (and its batch norm) -> ReLU / ReLU6 -> conv B, each channel c of the
activation is scaled up by s_c = (R / r_c) ** alpha (r_c its largest value over calibration,
R the tensor's, 1 <= s_c <= max_scale) in A's batch norm (or A's weights and bias), and B's
input channel c down by 1 / s_c. With per-output-channel weights the scaling is free on A,
and on B too when B is depthwise; into a pointwise B it moves error into B's weights, hence
the recipe's smaller exponent there (SmoothQuant's migration strength).

ReLU is positively homogeneous; ReLU6 is not: a scaled channel clips at 6 / s_c of its
original range, which lies above what calibration saw (s_c <= R / r_c), and the int8 model
clips each channel near r_c anyway. Assumes per-channel weights (the pass does nothing
otherwise); pairs touching a layer the plan keeps in fp32 are left alone.
"""

from __future__ import annotations

import numpy as np
import torch

from layerwise.compiler.layers import in_layers, layer_of

aten = torch.ops.aten
ACTIVATIONS = {aten.relu.default, aten.hardtanh.default, aten.clamp.default}
BATCH_NORM = aten._native_batch_norm_legit_no_training.default


def _sole_user(n):
    users = list(n.users)
    return users[0] if len(users) == 1 else None


def _own_attr(n) -> bool:
    """A weight only this op reads."""
    return isinstance(n, torch.fx.Node) and n.op == "get_attr" and len(n.users) == 1


def _zero_floor(act) -> bool:
    if act.target is aten.relu.default:
        return True
    lo = act.args[1] if len(act.args) > 1 else act.kwargs.get("min_val", act.kwargs.get("min"))
    return lo is not None and float(lo) == 0.0


def equalizable(gm, exclude: tuple[str, ...] = ()) -> list[tuple]:
    """(A, batch norm or None, activation, B, "dw" | "pw") for every conv A -> [batch norm]
    -> ReLU / ReLU6 / clamp(0, x) -> conv B where each tensor between them has one reader,
    the weights (and the batch norm's affine) are constants only they read, and neither
    conv belongs to a layer in `exclude` (layer-table paths)."""
    out = []
    for a in gm.graph.nodes:
        if a.target is not aten.convolution.default or not _own_attr(a.args[1]) or (
                a.args[2] is not None and not _own_attr(a.args[2])):
            continue
        nxt, bn = _sole_user(a), None
        if nxt is not None and nxt.target is BATCH_NORM:
            bn, get = nxt, _sole_user(nxt)
            if not (_own_attr(bn.args[1]) and _own_attr(bn.args[2])) or get is None or \
                    get.args[1] != 0:
                continue
            nxt = _sole_user(get)
        act = nxt
        if act is None or act.target not in ACTIVATIONS or not _zero_floor(act):
            continue
        b = _sole_user(act)
        if b is None or b.target is not aten.convolution.default or b.args[0] is not act \
                or not _own_attr(b.args[1]) or b.args[6]:  # not transposed
            continue
        w = _attr(gm, b.args[1].target)
        groups = int(b.args[8])
        kind = ("dw" if groups > 1 and groups == w.shape[0] and w.shape[1] == 1
                else "pw" if groups == 1 else None)
        if kind and not (in_layers(layer_of(a), exclude) or in_layers(layer_of(b), exclude)):
            out.append((a, bn, act, b, kind))
    return out


def channel_maxima(gm, nodes: list, batches: list[dict]) -> dict:
    """Largest value of each channel (axis 1) of `nodes` over `batches` (input name ->
    tensor)."""
    want, top = set(nodes), {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            if n in want:
                m = v.detach().float().transpose(0, 1).reshape(v.shape[1], -1).amax(1).numpy()
                top[n] = m if n not in top else np.maximum(top[n], m)
            return v

    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    with torch.no_grad():
        for batch in batches:
            Rec(gm).run(*[batch[k] for k in names])
    return top


def equalize(ir):
    """The pass: equalize `ir` by the recipe of its `quantize` annotation over
    ir.calibration (static int8 with per-channel weights only; otherwise `ir` unchanged).
    Returns a new IR when any activation was equalized; the count goes into its record."""
    plan = ir.annotations.get("quantize") or {}
    recipe = plan.get("recipe") or {}
    dw, pw = recipe.get("equalize_depthwise", 0.0), recipe.get("equalize_pointwise", 0.0)
    if plan.get("precision") != "int8" or not (dw or pw) or not recipe.get("per_channel", True):
        return ir
    batches = [{k: torch.from_numpy(v) for k, v in b.items()} for b in ir.calibration]
    out, _ = equalize_ir(ir, batches, depthwise=dw, pointwise=pw,
                         max_scale=recipe.get("equalize_max_scale", 16.0),
                         exclude=tuple(plan.get("keep_fp32", ())))
    return out


def equalized(ir) -> int:
    """How many activations the `equalize` pass equalized in `ir` (0 when it did not run)."""
    return sum(p.get("activations", 0) for p in ir.annotations.get("passes", [])
               if p.get("name") == "equalize")


def equalize_ir(ir, batches: list[dict], *, depthwise: float, pointwise: float,
                max_scale: float, exclude: tuple[str, ...] = ()):
    """(the equalized IR, how many activations were equalized) over `batches` (input name
    -> tensor); the IR itself when none was (its weights are not touched: a new IR is
    exported)."""
    gm = ir.module()
    pairs = [p for p in equalizable(gm, exclude)
             if (depthwise if p[4] == "dw" else pointwise) > 0]
    if not pairs or not batches:
        return ir, 0
    top = channel_maxima(gm, [p[2] for p in pairs], batches)
    done = 0
    for a, bn, act, b, kind in pairs:
        r = top[act].astype(np.float64)
        if not r.max() > 0:
            continue
        done += 1
        alpha = depthwise if kind == "dw" else pointwise
        s = np.clip((r.max() / np.maximum(r, 1e-6 * r.max())) ** alpha, 1.0, max_scale)
        up = [bn.args[1], bn.args[2]] if bn is not None else [a.args[1], a.args[2]]
        for node in up:  # per output channel of A (or its batch norm)
            if node is not None:
                _scale(gm, node.target, s, 0)
        _scale(gm, b.args[1].target, 1.0 / s, 0 if kind == "dw" else 1)
    if not done:
        return ir, 0
    return ir.rebuilt(gm, {"name": "equalize", "activations": done,
                           "depthwise": depthwise, "pointwise": pointwise}), done


def _owner(gm, target: str) -> tuple[torch.nn.Module, str]:
    owner, _, name = target.rpartition(".")
    return (gm.get_submodule(owner) if owner else gm), name


def _attr(gm, target: str) -> torch.Tensor:
    return getattr(*_owner(gm, target))


def _scale(gm, target: str, s: np.ndarray, axis: int) -> None:
    """Replace the constant `target` with a copy scaled by s along `axis` (the original
    tensor, shared with the IR's program, is left as it is)."""
    mod, name = _owner(gm, target)
    old = getattr(mod, name)
    shape = [1] * old.ndim
    shape[axis] = -1
    new = (old.detach().double() * torch.from_numpy(s).reshape(shape)).to(old.dtype)
    if name in mod._parameters:
        mod._parameters[name] = torch.nn.Parameter(new, requires_grad=False)
    else:
        mod._buffers[name] = new
