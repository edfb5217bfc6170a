"""Per-layer INT8 sensitivity: the model's output error when only one layer runs in int8.

Each weighted op (convolution, or a matmul whose second operand is a weight) is simulated in
int8 the way the targets' static recipes run it: per-output-channel symmetric int8 weights
and a per-tensor asymmetric uint8 input whose range is the input's min/max over the
calibration batches. One layer at a time is quantized (all its weighted ops), the model is
run on `batches` and its first output compared with the float one (relative L2 error). The
table ranks the layers worth keeping in a higher precision; the op simulation is the
textbook one, not a particular runtime's kernels.
"""

from __future__ import annotations

import torch
from torch import fx

from layerwise.compiler.capture import Capture
from layerwise.compiler.ir import IR, flat_tensors
from layerwise.compiler.layers import layer_of

aten = torch.ops.aten
# op -> (index of the activation argument, index of the weight argument, weight's out axis)
WEIGHTED = {aten.convolution.default: (0, 1, 0), aten.addmm.default: (1, 2, 1),
            aten.mm.default: (0, 1, 1)}
VIEWS = {aten.t.default, aten.permute.default, aten.transpose.int, aten.view.default,
         aten._unsafe_view.default, aten.reshape.default, aten.expand.default}


def _from_weight(node) -> bool:
    """Whether a node is a constant (get_attr), possibly through views/transposes."""
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in VIEWS:
        node = node.args[0]
    return isinstance(node, fx.Node) and node.op == "get_attr"


def weighted_ops(gm) -> dict[str, list[fx.Node]]:
    """Layer path -> its weighted ops (convolutions, matmuls by a constant)."""
    out: dict[str, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        spec = WEIGHTED.get(n.target)
        if spec and _from_weight(n.args[spec[1]]):
            out.setdefault(layer_of(n) or "(top level)", []).append(n)
    return out


def fake_int8_weight(w: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-channel symmetric int8 along `axis` (the output channels)."""
    dims = [d for d in range(w.dim()) if d != axis]
    scale = w.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / 127.0
    return (w / scale).round().clamp(-127, 127) * scale


def fake_uint8(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Per-tensor asymmetric uint8 over [lo, hi] (widened to hold zero)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zero = round(-lo / scale)
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero) * scale


class _OneLayerInt8(Capture):
    """Runs the graph with the ops in `ops` computed on int8-simulated operands."""

    def __init__(self, gm, ops: set[str], ranges: dict[str, tuple[float, float]]) -> None:
        super().__init__(gm, set())
        self.ops, self.ranges = ops, ranges

    def run_node(self, n):
        if n.name not in self.ops:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        a, w, axis = WEIGHTED[n.target]
        args = list(args)
        args[a] = fake_uint8(args[a], *self.ranges[n.name])
        args[w] = fake_int8_weight(args[w], axis)
        return n.target(*args, **kwargs)


def sensitivity(ir: IR, batches: list[dict[str, torch.Tensor]],
                layers: list[str] | None = None) -> dict[str, float]:
    """Layer path -> relative error of the first output with only that layer in int8, over
    `batches` (the calibration inputs also give each op's input range). `layers`: only
    these (default: every layer with a weighted op)."""
    gm = ir.module()
    ops = weighted_ops(gm)
    if layers is not None:
        ops = {k: v for k, v in ops.items() if k in set(layers)}
    inputs = {n.name: n.args[WEIGHTED[n.target][0]] for nodes in ops.values() for n in nodes}
    cap = Capture(gm, {a.name for a in inputs.values() if isinstance(a, fx.Node)})
    ranges: dict[str, tuple[float, float]] = {}
    reference = []
    with torch.no_grad():
        for b in batches:
            reference.append(flat_tensors(cap.run_feed(b))[0].float())
            for op, a in inputs.items():
                v = cap.values.get(getattr(a, "name", ""))
                if v is None:
                    continue
                lo, hi = float(v.min()), float(v.max())
                old = ranges.get(op, (lo, hi))
                ranges[op] = (min(old[0], lo), max(old[1], hi))
        ref = torch.cat([r.reshape(len(r), -1) for r in reference])
        out: dict[str, float] = {}
        for layer, nodes in ops.items():
            names = {n.name for n in nodes if n.name in ranges}
            if not names:
                continue
            run = _OneLayerInt8(gm, names, ranges)
            got = torch.cat([flat_tensors(run.run_feed(b))[0].float().reshape(len(r), -1)
                             for b, r in zip(batches, reference)])
            out[layer] = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
    return out
