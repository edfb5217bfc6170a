"""Cross-layer range equalization ahead of static INT8 (Nagel et al. 2019, "Data-Free
Quantization", section 4.1, with measured ranges in place of the weights' ranges).

Per-tensor int8 activations fit one scale to all channels of a tensor; where the channels
of a ReLU6 output span very different ranges (MobileNetV2), the small channels keep a few
levels only. Where Conv A -> ReLU/ReLU6 -> Conv B, channel c of A's output is scaled up by
s_c (A's weights and bias) and B's input channel c down by 1/s_c, so every channel reaches
about the tensor's range. With per-output-channel weights the scaling is free on A, and on B
too when B is depthwise (its weights scale per channel as well); into a pointwise B it moves
error into B's weights, hence a partial exponent there (s_c = (R / r_c) ** alpha, SmoothQuant's
migration strength).

ReLU is positively homogeneous; ReLU6 is not: the scaled channel clips at 6 / s_c of the
original. Scales stay >= 1 and r_c is the channel's largest value over calibration, so the
clip only cuts values above what calibration saw times 6 / R, and the int8 model clips each
channel near r_c anyway (the tensor's quantization range, which sits under 6, folds the Clip).
"""

from __future__ import annotations

import numpy as np


def _attr(node, name: str, default=None):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name),
                default)


def _const(model, name: str):
    """Value of an initializer or Constant output, or None."""
    from onnx import numpy_helper

    for i in model.graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def equalizable(model, exclude: set[str] = frozenset()) -> list[tuple]:
    """(A, activation, B, "dw" | "pw") for every Conv A -> Relu / Clip(0, x) -> Conv B where
    each tensor has a single consumer, A and B carry constant weights (and A a bias) and none
    of the three nodes is in `exclude`."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name for i in model.graph.initializer}

    def own(name: str) -> bool:  # a constant only this node reads
        return name in inits and len(consumers.get(name, [])) == 1

    out = []
    for a in model.graph.node:
        if (a.op_type != "Conv" or len(a.input) < 3 or not own(a.input[1])
                or not own(a.input[2]) or len(consumers.get(a.output[0], [])) != 1):
            continue
        act = consumers[a.output[0]][0]
        if act.op_type == "Clip":
            lo = _const(model, act.input[1]) if len(act.input) > 1 and act.input[1] else None
            if lo is None or float(lo) != 0.0:
                continue
        elif act.op_type != "Relu":
            continue
        users = consumers.get(act.output[0], [])
        if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != act.output[0]:
            continue
        b = users[0]
        if not own(b.input[1]) or {a.name, act.name, b.name} & exclude:
            continue
        w = next(i for i in model.graph.initializer if i.name == b.input[1])
        group = _attr(b, "group", 1)
        kind = ("dw" if group > 1 and group == w.dims[0] and w.dims[1] == 1
                else "pw" if group == 1 else None)
        if kind:
            out.append((a, act, b, kind))
    return out


def channel_maxima(model, tensors: list[str], batches: list[dict]) -> dict[str, np.ndarray]:
    """Largest value of each channel (axis 1) of `tensors` over `batches`."""
    import onnx

    from layerwise.targets.onnx_session import ort_session as _session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors)
    sess = _session(m)
    inputs = [i.name for i in sess.get_inputs()]
    out: dict[str, np.ndarray] = {}
    for batch in batches:
        for t, v in zip(tensors, sess.run(tensors, {k: batch[k] for k in inputs})):
            top = v.reshape(v.shape[0], v.shape[1], -1).max(axis=(0, 2))
            out[t] = top if t not in out else np.maximum(out[t], top)
    return out


def equalize(model, batches: list[dict], *, depthwise: float, pointwise: float,
             max_scale: float, exclude: set[str] = frozenset()) -> int:
    """Equalize the channel ranges of the activations between two convs (in place); the
    exponents `depthwise` / `pointwise` apply by the kind of the consuming conv (0: leave
    it); returns how many activations were equalized."""
    from onnx import numpy_helper

    pairs = [p for p in equalizable(model, exclude)
             if (depthwise if p[3] == "dw" else pointwise) > 0]
    if not pairs:
        return 0
    inits = {i.name: i for i in model.graph.initializer}
    top = channel_maxima(model, [act.output[0] for _, act, _, _ in pairs], batches)
    done = 0
    for a, act, b, kind in pairs:
        r = top[act.output[0]].astype(np.float64)
        if not r.max() > 0:
            continue
        done += 1
        alpha = depthwise if kind == "dw" else pointwise
        s = np.clip((r.max() / np.maximum(r, 1e-6 * r.max())) ** alpha, 1.0, max_scale)
        wa, ba, wb = (numpy_helper.to_array(inits[n]).astype(np.float64)
                      for n in (a.input[1], a.input[2], b.input[1]))
        wa = wa * s.reshape(-1, *[1] * (wa.ndim - 1))
        # depthwise B: output channel c reads input channel c; pointwise: input axis 1
        wb = wb / (s.reshape(-1, *[1] * (wb.ndim - 1)) if kind == "dw"
                   else s.reshape(1, -1, *[1] * (wb.ndim - 2)))
        for name, value in ((a.input[1], wa), (a.input[2], ba * s), (b.input[1], wb)):
            dtype = numpy_helper.to_array(inits[name]).dtype
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
    return done
