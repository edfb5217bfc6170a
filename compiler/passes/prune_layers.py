"""Layer rules of the pruning dependency walk: convolutions, weight matmuls, norms, pooling.

Mixed into `prune_groups.GroupFinder`; each rule reads the segments entering a layer, records
what the layer's weights lose (`act`) and sets the segments leaving it. See prune_groups for
the vocabulary (segments, groups, coarsening).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import fx

from layerwise.compiler.flops import size_hint

if TYPE_CHECKING:
    from layerwise.compiler.passes.prune_units import Segment

aten = torch.ops.aten
_POOL_TUPLE = {aten.max_pool2d_with_indices.default, aten.adaptive_max_pool2d.default}


def _shape(node) -> tuple[int, ...]:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return ()
    return tuple(size_hint(d) for d in val.shape)


@dataclass
class Weight:
    """A tensor derived from one get_attr weight by views: tensor axis -> weight axis."""

    target: str
    axes: list[int | None]
    chain: list[fx.Node]


@dataclass
class _Operands:
    """A matmul's operands: nodes, their segments, weights (or None) and ranks."""

    a: fx.Node
    b: fx.Node
    sa: list
    sb: list
    wa: Weight | None
    wb: Weight | None
    na: int
    nb: int
    nd: int


class LayerRules:
    """Rules for layers with weights (and pooling); needs GroupFinder's helpers."""

    def norm_params(self, node: fx.Node, s: Segment, params: list, axis_in_param: int) -> None:
        for p in params:
            w = self.weights.get(p) if isinstance(p, fx.Node) else None
            if w is not None:
                self.act(w, axis_in_param, s, "norm", node.name)
            elif p is not None:
                s.group.kill(f"norm parameters computed in the graph at {node.name}")

    def batch_norm(self, node: fx.Node) -> None:
        x = node.args[0]
        out = []
        for s in self.segs_of(x):
            if s.axis != 1 or s.period != _shape(x)[1]:
                s.group.kill(f"batch norm over other channels at {node.name}")
                continue
            self.norm_params(node, s, list(node.args[1:5]), 0)
            out.append(self.like(s))
        self.items[node] = {0: out}

    def layer_norm(self, node: fx.Node) -> None:
        x, normalized = node.args[0], node.args[1]
        nd = len(_shape(x))
        first = nd - len(normalized)
        out = []
        for s in self.segs_of(x):
            if s.axis >= first:
                if s.outer != 1:
                    s.group.kill(f"layer norm over interleaved channels at {node.name}")
                s.group.approx = True
                self.norm_params(node, s, list(node.args[2:4]), s.axis - first)
            out.append(self.like(s))
        self.items[node] = {0: out}

    def group_norm(self, node: fx.Node) -> None:
        x = node.args[0]
        c, groups = _shape(x)[1], node.args[6]
        out = []
        for s in self.segs_of(x):
            per = c // groups
            if s.axis != 1 or s.period != c or s.start != 0 or s.inner * s.group.units != c:
                s.group.kill(f"group norm over part of the channels at {node.name}")
                continue
            if not s.group.coarsen(per // math.gcd(s.inner, per)):
                continue
            s.group.groups_args.append((node.name, s, 6))
            self.norm_params(node, s, list(node.args[1:3]), 0)
            out.append(self.like(s))
        self.items[node] = {0: out}

    def pool(self, node: fx.Node) -> None:
        nd = len(_shape(node.args[0]))
        out = []
        for s in self.segs_of(node.args[0]):
            if s.axis >= nd - 2:
                s.group.kill(f"pooling over the channels at {node.name}")
            else:
                out.append(self.like(s))
        if node.target in _POOL_TUPLE:
            self.items[node] = {0: out, 1: [self.like(s) for s in out]}
        else:
            self.carry[node] = out

    def convolution(self, node: fx.Node) -> None:
        x, w_node, b_node = node.args[0], node.args[1], node.args[2]
        transposed, groups = node.args[6], node.args[8]
        w = self.weights.get(w_node)
        segs = self.segs_of(x)
        cin, cout = _shape(x)[1], _shape(node)[1]
        if transposed or w is None:
            for s in segs:
                s.group.kill(f"transposed or computed-weight conv at {node.name}")
            return
        if groups == 1:
            for s in segs:
                if s.axis != 1:
                    s.group.kill(f"conv over non-channel axis at {node.name}")
                    continue
                self.act(w, 1, s, "consumer", node.name)
                s.group.consumed.append((x.name, s))
            g = self.new_group(node, cout)
            s = self.seg(g, 1, outer=1, period=cout, start=0, inner=1)
            self.act(w, 0, s, "producer", node.name)
            if b_node is not None:
                self.act(self.weights[b_node], 0, s, "producer", node.name)
            self.carry[node] = [s]
            return
        out = []
        for s in segs:  # grouped / depthwise: whole conv groups pass through
            if s.axis != 1 or s.period != cin or s.start != 0 or s.inner * s.group.units != cin:
                s.group.kill(f"grouped conv over part of the channels at {node.name}")
                continue
            per = cin // groups
            if not s.group.coarsen(per // math.gcd(s.inner, per)):
                continue
            o = self.seg(s.group, 1, outer=1, period=cout, start=0,
                         inner=cout // s.group.units)
            self.act(w, 0, o, "producer", node.name)
            if b_node is not None:
                self.act(self.weights[b_node], 0, o, "producer", node.name)
            s.group.groups_args.append((node.name, s, 8))
            out.append(o)
        self.carry[node] = out

    def matmul(self, node: fx.Node) -> None:
        t = node.target
        if t is aten.addmm.default:
            bias, a, b = node.args[:3]
        elif t is aten.linear.default:
            a, b, bias = node.args[0], node.args[1], (node.args[2] if len(node.args) > 2
                                                        else None)
        else:
            a, b, bias = node.args[0], node.args[1], None
        wa, wb = self.weights.get(a), self.weights.get(b)
        if t is aten.linear.default and wb is not None:
            wb = Weight(wb.target, list(reversed(wb.axes)), wb.chain)
        nb = 2 if t is aten.linear.default else len(_shape(b))
        nd = len(_shape(node))
        ops = _Operands(a, b, self.segs_of(a), self.segs_of(b), wa, wb, len(_shape(a)), nb, nd)
        out = self._matmul_a(node, ops) + self._matmul_b(node, ops)
        if wb is not None and wa is None and wb.axes[nb - 1] is not None:
            n = _shape(node)[-1]
            g = self.new_group(node, n)
            s = self.seg(g, nd - 1, outer=1, period=n, start=0, inner=1)
            self.act(wb, nb - 1, s, "producer", node.name)
            out.append(s)
        self.carry[node] = out
        if bias is not None:
            self.pointwise(node, [(node, out, _shape(node)), bias])

    def _matmul_a(self, node: fx.Node, ops: _Operands) -> list:
        """Segments of the left operand: rows pass, contraction consumes, batch couples."""
        t = node.target
        a, b, sa, sb, wb = ops.a, ops.b, ops.sa, ops.sb, ops.wb
        na, nb, nd = ops.na, ops.nb, ops.nd
        out: list = []
        for s in sa:
            k = s.axis == na - 1
            if k:  # contraction over the channels: b's rows must shrink with them
                kb = nb - 2
                mine = [x for x in sb if x.axis == kb]
                if wb is not None:
                    self.act(wb, kb, s, "consumer", node.name)
                    s.group.consumed.append((a.name, s))
                elif mine and mine[0].start == s.start:
                    self.merge(s, mine[0], node.name)
                else:
                    s.group.kill(f"contracted against an unpruned tensor at {node.name}")
            elif s.axis == na - 2:
                out.append(self.like(s, axis=nd - 2))
            else:
                ob = s.axis + nb - na
                mine = [x for x in sb if x.axis == ob]
                bshape = _shape(b) if t is not aten.linear.default else ()
                if mine:
                    self.merge(s, mine[0], node.name)
                    s.group.heads = True
                elif wb is not None and (ob < 0 or bshape[ob] == 1):
                    pass
                else:
                    s.group.kill(f"batch channels meet an unpruned tensor at {node.name}")
                out.append(self.like(s, axis=s.axis + nd - na))
        return out

    def _matmul_b(self, node: fx.Node, ops: _Operands) -> list:
        """Segments of the right operand (a weight carries none)."""
        a, sa, sb, wa = ops.a, ops.sa, ops.sb, ops.wa
        na, nb, nd = ops.na, ops.nb, ops.nd
        out: list = []
        for s in sb:
            if s.axis == nb - 1:
                out.append(self.like(s, axis=nd - 1))
            elif s.axis == nb - 2:
                if not any(x.axis == na - 1 for x in sa):
                    s.group.kill(f"contracted against an unpruned tensor at {node.name}")
            elif not any(x.axis == s.axis + na - nb for x in sa):
                if not (wa is not None or _shape(a)[s.axis + na - nb] == 1):
                    s.group.kill(f"batch channels meet an unpruned tensor at {node.name}")
                out.append(self.like(s, axis=s.axis + nd - nb))
        return out
