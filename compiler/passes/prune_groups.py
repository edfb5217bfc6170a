"""Dependency groups for structured pruning, found on the unlifted Core ATen graph.

A *group* is a set of channels that must be removed together. Each prunable producer (a conv
with groups == 1, a matmul against a weight: linear, addmm, bmm with an expanded weight) starts
one, over its output channels. One topological walk then follows every channel-carrying tensor:

- a *segment* says where a group's units sit in a tensor: on axis `axis`, position
  ``o * period + start + u * inner + i`` for unit ``u`` (``o < outer``, ``i < inner``);
- ops that keep channels map segments (pointwise ops, norms, pooling, permute, view, expand,
  reductions over other axes, bmm batch axes, concatenation with offsets);
- a pointwise op between two groups' tensors merges them (residual adds); a weight constant
  there (a bias, a layer scale) is sliced with them;
- a view that splits the channel axis (hidden -> heads x head_dim) *coarsens* the group: a
  unit becomes ``head_dim`` channels, so whole attention heads go together; grouped convs and
  group norms coarsen to whole groups the same way;
- the consumers (conv input channels, weight matmul contraction) slice their weights;
- anything else (the graph output, an unknown op, a shared weight) marks the group dead:
  it is never pruned, so the pass cannot produce a wrong model.

The rules for layers with weights (convs, matmuls, norms, pooling) are in `prune_layers`.
Assumes the graph comes from `ExportedProgram.module()` (weights as get_attr nodes) with shape
metadata (`meta["val"]`) on every tensor node.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx

from layerwise.compiler.passes.prune_layers import LayerRules, Weight, _shape
from layerwise.compiler.passes.prune_units import Action, Group, Segment

aten = torch.ops.aten


class GroupFinder(LayerRules):
    """Walk a graph once and return its groups (`run`)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.groups: list[Group] = []
        self.carry: dict[fx.Node, list[Segment]] = {}
        self.items: dict[fx.Node, dict[int, list[Segment]]] = {}  # tuple outputs
        self.weights: dict[fx.Node, Weight] = {}
        self.forward: dict[int, Group] = {}
        uses: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "get_attr":
                uses[n.target] = uses.get(n.target, 0) + len(n.users)
        self.uses = uses

    # ------------------------------------------------------------ helpers

    def new_group(self, node: fx.Node, units: int) -> Group:
        g = Group(len(self.groups), units, [node.name])
        self.groups.append(g)
        return g

    def seg(self, group: Group, axis: int, *, outer: int, period: int, start: int,
            inner: int) -> Segment:
        s = Segment(group, axis, outer, period, start, inner)
        group.segs.append(s)
        return s

    def like(self, s: Segment, **kw) -> Segment:
        d = {"axis": s.axis, "outer": s.outer, "period": s.period, "start": s.start,
             "inner": s.inner, **kw}
        return self.seg(s.group, **d)

    def segs_of(self, a) -> list[Segment]:
        return self.carry.get(a, []) if isinstance(a, fx.Node) else []

    def kill_all(self, node: fx.Node, why: str) -> None:
        for a in node.all_input_nodes:
            for s in self.segs_of(a):
                s.group.kill(f"{why} at {node.name}")
            for segs in self.items.get(a, {}).values():
                for s in segs:
                    s.group.kill(f"{why} at {node.name}")

    def merge(self, a: Segment, b: Segment, where: str) -> None:
        """Make two segments at the same place one group (coarsening to a common unit)."""
        ga, gb = a.group, b.group
        if (a.axis, a.period, a.start, a.inner * ga.units) != \
                (b.axis, b.period, b.start, b.inner * gb.units):
            ga.kill(f"mismatched channels at {where}")
            gb.kill(f"mismatched channels at {where}")
            return
        if ga is gb:
            if a.inner != b.inner:
                ga.kill(f"channels permuted within a group at {where}")
            return
        common = math.gcd(ga.units, gb.units)
        ga.coarsen(ga.units // common)
        gb.coarsen(gb.units // common)
        for s in gb.segs:
            s.group = ga
        ga.segs += gb.segs
        ga.actions += gb.actions
        ga.consumed += gb.consumed
        ga.producers += gb.producers
        ga.groups_args += gb.groups_args
        ga.heads |= gb.heads
        ga.approx |= gb.approx
        if gb.dead:
            ga.kill(gb.dead)
        self.forward[gb.id] = ga
        gb.segs, gb.actions = [], []

    def act(self, w: Weight, axis: int | None, seg: Segment, role: str, where: str) -> None:
        """Slice weight `w` along its tensor axis `axis` with `seg` (the same group)."""
        if axis is None or w.axes[axis] is None:
            return
        if self.uses.get(w.target, 0) != 1 or any(len(n.users) != 1 for n in w.chain):
            seg.group.kill(f"weight {w.target} is shared (at {where})")
            return
        seg.group.actions.append(Action(w.target, w.axes[axis], seg, role))

    # ------------------------------------------------------------ the walk

    def run(self) -> list[Group]:
        for node in self.gm.graph.nodes:
            if node.op == "get_attr":
                val = node.meta.get("val")
                if isinstance(val, torch.Tensor):
                    self.weights[node] = Weight(node.target, list(range(val.dim())), [])
            elif node.op == "call_function":
                self.visit(node)
            elif node.op == "output":
                self.kill_all(node, "reaches the model output")
            elif node.op in ("call_module", "call_method"):
                self.kill_all(node, f"unknown {node.op} {node.target}")
        self.check_shape_args()
        return [g for g in self.groups if g.id not in self.forward]

    def check_shape_args(self) -> None:
        """A view or expand whose channel size is not a literal or `sym * int` cannot be
        rewritten: its groups stay whole."""
        for node, segs in self.carry.items():
            if node.target not in SHAPE_OPS:
                continue
            for s in segs:
                if not rewritable(node.args[1][s.axis]):
                    s.group.kill(f"shape argument of {node.name} is computed")

    def visit(self, node: fx.Node) -> None:
        t = node.target
        if t is operator.getitem:
            src, idx = node.args
            if src in self.items:
                self.carry[node] = self.items[src].get(idx, [])
            return
        if t is aten.sym_size.int and all(s.axis != node.args[1] % len(_shape(node.args[0]))
                                          for s in self.segs_of(node.args[0])):
            return
        if node.target is aten._assert_tensor_metadata.default and \
                node.kwargs.get("size") is None and (len(node.args) < 2 or node.args[1] is None):
            return
        if self.weight_view(node):
            return
        handler = _HANDLERS.get(t)
        if handler is not None:
            handler(self, node)
            return
        if isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags:
            self.pointwise(node)
            return
        if t in _LIKE:
            self.carry[node] = [self.like(s) for s in self.segs_of(node.args[0])]
            return
        if any(self.segs_of(a) or a in self.items for a in node.all_input_nodes):
            self.kill_all(node, f"unknown op {t}")

    # ------------------------------------------------------------ weights

    def weight_view(self, node: fx.Node) -> bool:
        """Track views of a weight (permute, expand, same-shape view, clone)."""
        src = node.args[0] if node.args else None
        w = self.weights.get(src) if isinstance(src, fx.Node) else None
        if w is None:
            return False
        t = node.target
        axes: list[int | None] | None = None
        if t in (aten.clone.default, aten._to_copy.default, aten.alias.default,
                 aten.detach.default):
            axes = list(w.axes)
        elif t is aten.permute.default:
            axes = [w.axes[d] for d in node.args[1]]
        elif t is aten.t.default:
            axes = list(reversed(w.axes))
        elif t is aten.unsqueeze.default:
            d = node.args[1] % (len(w.axes) + 1)
            axes = [*w.axes[:d], None, *w.axes[d:]]
        elif t is aten.expand.default:
            old, new = _shape(src), _shape(node)
            lead = len(new) - len(old)
            if lead >= 0 and all(o in (n, 1) for o, n in zip(old, new[lead:])):
                axes = [None] * lead + [a if o == n else None
                                        for a, o, n in zip(w.axes, old, new[lead:])]
        elif t in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            # only views that add or drop size-1 dims (a layer scale shaped [1, C, 1, 1])
            old = [(a, o) for a, o in zip(w.axes, _shape(src)) if o != 1]
            new = [i for i, n in enumerate(_shape(node)) if n != 1]
            if [o for _, o in old] == [_shape(node)[i] for i in new]:
                axes = [None] * len(_shape(node))
                for (a, _), i in zip(old, new):
                    axes[i] = a
        if axes is None:
            return False
        self.weights[node] = Weight(w.target, axes, [*w.chain, node])
        return True

    # ------------------------------------------------------------ op rules

    def pointwise(self, node: fx.Node, operands: list | None = None) -> None:
        """Broadcasting elementwise op: carriers must agree (merging groups), weights at full
        size are sliced, other full-size tensors make the group dead."""
        out_shape = _shape(node)
        nd = len(out_shape)
        ops = operands if operands is not None else [
            a for a in _flat_args(node) if isinstance(a, fx.Node)]
        placed: list[tuple[object, list[Segment], int]] = []
        for a in ops:
            segs = a[1] if isinstance(a, tuple) else self.segs_of(a)
            shape = a[2] if isinstance(a, tuple) else _shape(a)
            placed.append((a, segs, nd - len(shape)))
        out: list[Segment] = []
        for a, segs, lead in placed:
            for s in segs:
                axis = s.axis + lead
                match = next((o for o in out if o.axis == axis and o.start == s.start), None)
                if match is None:
                    out.append(self.like(s, axis=axis))
                else:
                    self.merge(match, self.like(s, axis=axis), node.name)
        for a, segs, lead in placed:
            shape = a[2] if isinstance(a, tuple) else _shape(a)
            w = self.weights.get(a) if isinstance(a, fx.Node) else None
            for s in out:
                ax = s.axis - lead
                if ax < 0 or shape[ax] == 1:
                    continue  # broadcast over the channels
                mine = [t for t in segs if t.axis == ax]
                if any(t.start == s.start for t in mine):
                    continue
                if w is not None and w.axes[ax] is not None and not mine:
                    self.act(w, ax, s, "const", node.name)
                else:
                    s.group.kill(f"channels meet an unpruned tensor at {node.name}")
        self.carry[node] = [s for s in out if s.axis < nd]

    def passthrough(self, node: fx.Node) -> None:
        self.carry[node] = [self.like(s) for s in self.segs_of(node.args[0])]

    def permute(self, node: fx.Node) -> None:
        perm = [d % len(node.args[1]) for d in node.args[1]]
        self.carry[node] = [self.like(s, axis=perm.index(s.axis))
                            for s in self.segs_of(node.args[0])]

    def unsqueeze(self, node: fx.Node) -> None:
        d = node.args[1] % len(_shape(node))
        self.carry[node] = [self.like(s, axis=s.axis + (s.axis >= d))
                            for s in self.segs_of(node.args[0])]

    def squeeze(self, node: fx.Node) -> None:
        src = node.args[0]
        shape = _shape(src)
        dims = node.args[1] if len(node.args) > 1 else [i for i, d in enumerate(shape) if d == 1]
        dims = [d % len(shape) for d in ([dims] if isinstance(dims, int) else dims)
                if shape[d] == 1]
        self.carry[node] = [self.like(s, axis=s.axis - sum(d < s.axis for d in dims))
                            for s in self.segs_of(src) if s.axis not in dims]

    def reduce(self, node: fx.Node) -> None:
        src = node.args[0]
        nd = len(_shape(src))
        dims = node.args[1] if len(node.args) > 1 else None
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        dims = list(range(nd)) if dims is None or dims == [] else (
            [dims] if isinstance(dims, int) else list(dims))
        dims = [d % nd for d in dims]
        out = []
        for s in self.segs_of(src):
            if s.axis in dims:
                s.group.kill(f"reduced over the channels at {node.name}")
            else:
                out.append(self.like(s, axis=s.axis if keep else
                                     s.axis - sum(d < s.axis for d in dims)))
        self.carry[node] = out

    def softmax(self, node: fx.Node) -> None:
        d = node.args[1] % len(_shape(node))
        for s in self.segs_of(node.args[0]):
            if s.axis == d:
                s.group.kill(f"softmax over the channels at {node.name}")
        self.passthrough(node)

    def slicing(self, node: fx.Node) -> None:
        src = node.args[0]
        nd = len(_shape(src))
        d = (node.args[1] if len(node.args) > 1 else 0) % nd
        full = node.target is aten.slice.Tensor and _shape(src)[d] == _shape(node)[d]
        out = []
        for s in self.segs_of(src):
            if s.axis == d and not full:
                s.group.kill(f"sliced channels at {node.name}")
            elif node.target is aten.select.int and s.axis == d:
                s.group.kill(f"selected channel at {node.name}")
            else:
                shift = node.target is aten.select.int and d < s.axis
                out.append(self.like(s, axis=s.axis - shift))
        self.carry[node] = out

    def view(self, node: fx.Node) -> None:
        src = node.args[0]
        old, new = _shape(src), _shape(node)
        out = []
        for s in self.segs_of(src):
            placed = self.place_view(s, old, new)
            if placed is None:
                s.group.kill(f"a view mixes the channels at {node.name}")
            else:
                out.append(placed)
        self.carry[node] = out

    def place_view(self, s: Segment, old: tuple, new: tuple) -> Segment | None:
        """The segment `s` of a tensor of shape `old` seen through a view to `new`."""
        pre = math.prod(old[:s.axis])
        suf = math.prod(old[s.axis + 1:])
        outer_f = pre * (old[s.axis] // s.period)
        for coarse in (False, True):
            for b, size in enumerate(new):
                if size == 1:
                    continue
                pre_b, suf_b = math.prod(new[:b]), math.prod(new[b + 1:])
                if outer_f % pre_b or s.period * suf % suf_b or s.start * suf % suf_b:
                    continue
                outer_b = outer_f // pre_b
                if size % outer_b or (size // outer_b) * suf_b != s.period * suf:
                    continue
                inner_f = s.inner * suf
                if s.group.units > 1 and suf_b >= s.group.units * inner_f:
                    continue  # the units all sit inside one position of this axis
                if inner_f % suf_b:
                    if not coarse:
                        continue
                    f = suf_b // math.gcd(inner_f, suf_b)
                    if not s.group.coarsen(f):
                        return None
                    inner_f = s.inner * suf
                return self.like(s, axis=b, outer=outer_b, period=size // outer_b,
                                 start=s.start * suf // suf_b, inner=inner_f // suf_b)
        return None

    def expand(self, node: fx.Node) -> None:
        lead = len(_shape(node)) - len(_shape(node.args[0]))
        self.carry[node] = [self.like(s, axis=s.axis + lead) for s in self.segs_of(node.args[0])]

    def cat(self, node: fx.Node) -> None:
        tensors = node.args[0]
        nd = len(_shape(node))
        d = (node.args[1] if len(node.args) > 1 else 0) % nd
        offset, out = 0, []
        firsts: dict[int, Segment] = {}
        for a in tensors:
            size = _shape(a)[d]
            for s in self.segs_of(a):
                if s.axis == d:
                    if s.outer != 1 and size // s.period != 1:
                        s.group.kill(f"concatenated interleaved channels at {node.name}")
                    out.append(self.like(s, start=s.start + offset, period=_shape(node)[d]))
                else:
                    key = s.axis * 10**9 + s.start
                    if key in firsts:
                        self.merge(firsts[key], s, node.name)
                    else:
                        firsts[key] = s
            offset += size
        for s in firsts.values():
            if not all(any(t.axis == s.axis and t.start == s.start for t in self.segs_of(a))
                       for a in tensors):
                s.group.kill(f"concatenated beside an unpruned tensor at {node.name}")
            out.append(self.like(s))
        self.carry[node] = out

SHAPE_OPS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
             aten.expand.default}


def rewritable(arg) -> bool:
    """A shape entry we can scale: an int, or `sym * int` (a batch folded with heads)."""
    if isinstance(arg, int):
        return True
    return (isinstance(arg, fx.Node) and arg.target is operator.mul
            and any(isinstance(a, int) for a in arg.args))


def _flat_args(node: fx.Node) -> list:
    out = []
    for a in (*node.args, *node.kwargs.values()):
        out += list(a) if isinstance(a, (list, tuple)) else [a]
    return out


_LIKE = {aten.full_like.default, aten.zeros_like.default, aten.ones_like.default,
         aten.empty_like.default, aten._to_copy.default, aten.alias.default,
         aten.detach.default, aten.lift_fresh_copy.default}

_HANDLERS = {
    aten.permute.default: GroupFinder.permute,
    aten.unsqueeze.default: GroupFinder.unsqueeze,
    aten.squeeze.dims: GroupFinder.squeeze,
    aten.squeeze.dim: GroupFinder.squeeze,
    aten.squeeze.default: GroupFinder.squeeze,
    aten.view.default: GroupFinder.view,
    aten.reshape.default: GroupFinder.view,
    aten._unsafe_view.default: GroupFinder.view,
    aten.expand.default: GroupFinder.expand,
    aten.cat.default: GroupFinder.cat,
    aten.slice.Tensor: GroupFinder.slicing,
    aten.select.int: GroupFinder.slicing,
    aten._softmax.default: GroupFinder.softmax,
    aten._log_softmax.default: GroupFinder.softmax,
    aten.convolution.default: GroupFinder.convolution,
    aten.mm.default: GroupFinder.matmul,
    aten.bmm.default: GroupFinder.matmul,
    aten.addmm.default: GroupFinder.matmul,
    aten.linear.default: GroupFinder.matmul,
    aten._native_batch_norm_legit_no_training.default: GroupFinder.batch_norm,
    aten.native_layer_norm.default: GroupFinder.layer_norm,
    aten.native_group_norm.default: GroupFinder.group_norm,
    aten.max_pool2d_with_indices.default: GroupFinder.pool,
    aten.adaptive_max_pool2d.default: GroupFinder.pool,
    aten.avg_pool2d.default: GroupFinder.pool,
    aten._adaptive_avg_pool2d.default: GroupFinder.pool,
    aten.upsample_nearest2d.vec: GroupFinder.pool,
    aten.upsample_bilinear2d.vec: GroupFinder.pool,
    **{op: GroupFinder.reduce for op in (
        aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default,
        aten.any.dim, aten.all.dim, aten.var.correction, aten.argmax.default)},
}

