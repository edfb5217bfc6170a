"""`prune`: structured pruning of conv channels, MLP hidden units and attention heads.

The dependency groups come from `prune_groups` (one walk over the graph); this module scores
each group's units, removes the lowest-scoring ones from the weights (really shrinking them),
rewrites the shape constants that name the pruned sizes (view / expand sizes, head counts
folded with the batch, layer norm shapes, conv and group-norm group counts) and re-exports.

Scores per unit (a channel, or a whole head / conv group where the group is coarsened), summed
over the group's members:

- ``l2`` (data-free): the L2 norm of every parameter slice that leaves with the unit
  (producer rows, consumer columns, norm scale and shift, biases; running statistics are not
  weights and are left out). Cheap, but blind to batch norms that undo a row's scale and to
  channels that act as constant biases: on MobileNetV2 prefer a data-driven criterion;
- ``activation``: mean |x| of the unit's channels where the group is read (the inputs of the
  consuming convs / linears), over the calibration batches;
- ``taylor``: the first-order change of the model's output when the unit is removed. Removing
  a unit is zeroing it at its consumers' inputs, so the output moves by ``-J a_u``; its squared
  size is estimated with random output projections r (``E[(r . J a_u)^2] = |J a_u|^2``): the
  gradient g of ``r . y`` at the consumer inputs gives ``(sum over the unit of g * a)^2``,
  averaged over probes and batches. No labels are needed and, unlike a loss against the
  model's own outputs, the first-order term does not vanish at the unpruned model.

Batches for the data-driven criteria: `batches` (feed dicts of tensors / numpy arrays, or
objects with an `.inputs` dict), else `ir.calibration`, else the IR's example inputs.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
from torch import fx, nn
from torch.export import Dim

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.capture import Capture
from layerwise.compiler.ir import IR
from layerwise.compiler.layers import build_layer_table
from layerwise.compiler.passes.prune_groups import (
    SHAPE_OPS,
    Group,
    GroupFinder,
    Segment,
)
from layerwise.compiler.passes.prune_layers import _shape

aten = torch.ops.aten
CRITERIA = ("l2", "activation", "taylor")
# Default ratio of units removed per group when the pass runs with no arguments (`--passes
# prune`): a quarter keeps an untrained model's outputs recognisable; heavier pruning needs
# the plan search's quality bound or a healing run.
DEFAULT_RATIO = 0.25


class PruneError(LayerwiseError):
    """Bad pruning arguments or a model the pruned program cannot be re-exported for."""


def prune(ir: IR, ratio: float = DEFAULT_RATIO, criterion: str = "l2", *, batches=None,
          heads_ratio: float | None = None, min_channels: int = 8, multiple: int = 8,
          through_norms: bool = True, probes: int = 4) -> IR:
    """A new IR with the lowest-scoring `ratio` of units removed from every prunable group.

    `heads_ratio` (default: `ratio`) applies to attention-head groups; every group keeps at
    least `min_channels` channels (and one unit), rounded up to a multiple of `multiple`
    channels where the unit width allows. The default 8 matters: ONNX Runtime's conv kernels
    run unaligned channel counts slower than the wider aligned ones, so pruning without it
    can make the model slower than unpruned. With
    `through_norms=False`, groups that pass through a layer norm over their channels stay
    whole (pruning them changes the norm's statistics, so it is never exact). `probes`:
    random output projections per batch for `taylor`. The reference outputs stay the
    original model's. Raises PruneError on bad arguments.
    """
    if multiple < 1 or min_channels < 0:
        raise PruneError(f"prune multiple {multiple} must be >= 1 and min_channels "
                         f"{min_channels} >= 0")
    if criterion not in CRITERIA:
        raise PruneError(f"unknown prune criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
    for name, r in (("ratio", ratio), ("heads_ratio", heads_ratio)):
        if r is not None and not 0 <= r < 1:
            raise PruneError(f"prune {name} {r} must lie in [0, 1)")
    gm = ir.module()
    finder = GroupFinder(gm)
    groups = finder.run()
    for g in groups:
        if g.approx and not through_norms:
            g.kill("passes through a layer norm over its channels (through_norms=False)")
    live = [g for g in groups if g.dead is None and g.units > 1]
    scores = _scores(gm, live, criterion, _feeds(ir, batches), probes)
    keep: dict[int, list[int]] = {}
    for g in live:
        r = heads_ratio if g.heads and heads_ratio is not None else ratio
        n_keep = max(g.units - int(r * g.units + 1e-9),
                     min(g.units, max(1, math.ceil(min_channels / g.unit_channels()))))
        step = multiple // math.gcd(multiple, g.unit_channels())
        n_keep = min(g.units, -(-n_keep // step) * step)
        if n_keep < g.units:
            order = sorted(range(g.units), key=lambda u: (-float(scores[g.id][u]), u))
            keep[g.id] = sorted(order[:n_keep])
    _apply(gm, finder, {g.id: g for g in live}, keep)
    out = _reexport(ir, gm)
    summary = {
        "name": "prune", "criterion": criterion, "ratio": ratio, "heads_ratio": heads_ratio,
        "min_channels": min_channels, "multiple": multiple,
        "params": [ir.params, out.params],
        "groups": [_describe(gm, g, keep.get(g.id)) for g in live if g.id in keep],
        "unprunable": sorted({g.dead or "one unit" for g in groups if g not in live})[:20],
    }
    out.annotations["passes"] = [*ir.annotations.get("passes", []), summary]
    return out


def dependency_groups(ir: IR) -> list[Group]:
    """The dependency groups of an IR (dead ones carry the reason in `.dead`)."""
    return GroupFinder(ir.module()).run()


# ---------------------------------------------------------------- scores


def _unit_sum(x: torch.Tensor, seg: Segment, units: int) -> torch.Tensor:
    """Sum of `x` over each unit's positions (x already laid out like the segment's tensor)."""
    x = x.movedim(seg.axis, 0)
    outer = x.shape[0] // seg.period
    x = x.reshape(outer, seg.period, -1)[:, seg.start:seg.start + units * seg.inner]
    return x.reshape(outer, units, seg.inner, -1).sum(dim=(0, 2, 3))


def _count(x: torch.Tensor, seg: Segment) -> int:
    """Elements of `x` that belong to one unit."""
    size = x.shape[seg.axis]
    return x.numel() // size * seg.inner * (size // seg.period)


def _scores(gm, groups: list[Group], criterion: str, feeds, probes: int) -> dict:
    scores = {g.id: torch.zeros(g.units, dtype=torch.float64) for g in groups}
    if criterion == "l2":
        for g in groups:
            for a in g.actions:
                w = _get(gm, a.target)
                if isinstance(w, nn.Parameter):
                    scores[g.id] += _unit_sum(w.detach().double() ** 2, _on(a.seg, a.axis),
                                              g.units)
            scores[g.id] = scores[g.id].sqrt()
        return scores
    points = {name for g in groups for name, _ in g.consumed}
    gen = torch.Generator().manual_seed(0)  # the same probes every run
    for feed in feeds:
        if criterion == "activation":
            cap = Capture(gm, points)
            with torch.no_grad():
                cap.run_feed(feed)
            values = cap.values
            for g in groups:
                for name, seg in g.consumed:
                    x = values[name].double().abs()
                    scores[g.id] += _unit_sum(x, seg, g.units) / _count(x, seg)
        else:
            cap = Capture(gm, points, perturb=True)
            with torch.enable_grad():
                outs = [o for o in cap.run_feed(feed) if o.is_floating_point()]
                for _ in range(probes):
                    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
                               for o in outs)
                    names = list(cap.eps)
                    grads = torch.autograd.grad(loss, [cap.eps[n] for n in names],
                                                retain_graph=True, allow_unused=True)
                    grad = dict(zip(names, grads))
                    for g in groups:
                        total = torch.zeros(g.units, dtype=torch.float64)
                        for name, seg in g.consumed:
                            if grad[name] is not None:
                                ga = (grad[name] * cap.values[name]).detach().double()
                                total += _unit_sum(ga, seg, g.units)
                        scores[g.id] += total ** 2
    for g in groups:  # a group never read by a consumer falls back to its weights
        if not g.consumed:
            scores[g.id] = _scores(gm, [g], "l2", [], probes)[g.id]
    return scores


def _on(seg: Segment, axis: int) -> Segment:
    return Segment(seg.group, axis, seg.outer, seg.period, seg.start, seg.inner)


def _feeds(ir: IR, batches) -> list[dict[str, torch.Tensor]]:
    raw = batches if batches else (ir.calibration or [ir.example_inputs])
    feeds = []
    for b in raw:
        d = getattr(b, "inputs", b)
        feeds.append({k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor)
                      else v for k, v in d.items()})
    return feeds


# ---------------------------------------------------------------- rewriting


def _get(gm: nn.Module, target: str):
    mod, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(mod) if mod else gm, name)


def _set(gm: nn.Module, target: str, value: torch.Tensor) -> None:
    path, _, name = target.rpartition(".")
    mod = gm.get_submodule(path) if path else gm
    old = getattr(mod, name)
    if isinstance(old, nn.Parameter):
        value = nn.Parameter(value, requires_grad=old.requires_grad)
    setattr(mod, name, value)


def _removed(seg: Segment, size: int, keep: dict[int, list[int]]) -> list[int]:
    kept = keep.get(seg.group.id)
    if kept is None:
        return []
    drop = sorted(set(range(seg.group.units)) - set(kept))
    return seg.positions(drop, size)


def _apply(gm: fx.GraphModule, finder: GroupFinder, groups: dict[int, Group],
           keep: dict[int, list[int]]) -> None:
    """Slice the weights and rewrite the shape constants of `gm` in place."""
    cut: dict[tuple[str, int], set[int]] = {}
    for gid in keep:
        for a in groups[gid].actions:
            size = _get(gm, a.target).shape[a.axis]
            cut.setdefault((a.target, a.axis), set()).update(_removed(a.seg, size, keep))
    new_shapes: dict[str, list[int]] = {}
    for (target, axis), drop in sorted(cut.items()):
        w = _get(gm, target)
        kept = torch.tensor([i for i in range(w.shape[axis]) if i not in drop])
        _set(gm, target, w.detach().index_select(axis, kept).clone())
        new_shapes[target] = list(_get(gm, target).shape)
    graph = gm.graph
    for node in list(graph.nodes):
        old = _shape(node)
        new = list(old)
        for s in finder.carry.get(node, []):
            if s.group.id in keep:
                new[s.axis] -= len(_removed(s, old[s.axis], keep))
        w = finder.weights.get(node)
        if w is not None and w.target in new_shapes:
            for ax, wax in enumerate(w.axes):
                if wax is not None:
                    new[ax] = new_shapes[w.target][wax]
        if node.target in SHAPE_OPS and tuple(new) != old:
            sizes = list(node.args[1])
            for ax, (o, n) in enumerate(zip(old, new)):
                if o != n:
                    sizes[ax] = _scaled(graph, node, sizes[ax], o, n)
            node.args = (node.args[0], sizes, *node.args[2:])
        if node.target is aten.native_layer_norm.default:
            x = node.args[0]
            xo, xn = _shape(x), _new_shape(x, finder, keep)
            first = len(xo) - len(node.args[1])
            node.args = (x, [xn[first + i] for i in range(len(node.args[1]))], *node.args[2:])
    for g in (groups[gid] for gid in keep):
        for name, seg, idx in g.groups_args:
            node = next(n for n in graph.nodes if n.name == name)
            args = list(node.args)
            args[idx] = args[idx] // g.units * len(keep[g.id])
            if node.target is aten.native_group_norm.default:
                args[4] = _new_shape(node.args[0], finder, keep)[1]
            node.args = tuple(args)
    graph.lint()
    gm.recompile()


def _new_shape(node: fx.Node, finder: GroupFinder, keep) -> list[int]:
    old = _shape(node)
    new = list(old)
    for s in finder.carry.get(node, []):
        if s.group.id in keep:
            new[s.axis] -= len(_removed(s, old[s.axis], keep))
    return new


def _scaled(graph: fx.Graph, node: fx.Node, arg, old: int, new: int):
    """Shape entry `arg` (for a dim of size old) made to give size new."""
    if isinstance(arg, int):
        if arg == -1:
            return arg
        if arg * new % old:
            raise PruneError(f"cannot resize {node.name} from {old} to {new}")
        return arg * new // old
    sym, c = (arg.args[0], arg.args[1]) if isinstance(arg.args[1], int) else arg.args[::-1]
    if c * new % old:
        raise PruneError(f"cannot resize {node.name}: {c} * {new} / {old} is not whole")
    with graph.inserting_before(node):
        return graph.call_function(operator.mul, (sym, c * new // old))


def _reexport(ir: IR, gm: fx.GraphModule) -> IR:
    dynamic = {k: {0: Dim.AUTO} if v.dim() > 0 else None for k, v in ir.example_inputs.items()}
    try:
        ep = torch.export.export(gm, (), kwargs=dict(ir.example_inputs), dynamic_shapes=dynamic,
                                 strict=False)
        ep = ep.run_decompositions()
    except Exception as e:  # noqa: BLE001 - export failures come in many types
        raise PruneError(f"re-exporting the pruned model failed: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}; prune less or report the model") from e
    return IR(ep, build_layer_table(ep), dict(ir.example_inputs), list(ir.reference),
              list(ir.output_names), dict(ir.meta), dict(ir.annotations))


def _layer_of(gm: fx.GraphModule, name: str) -> str:
    node = next((n for n in gm.graph.nodes if n.name == name), None)
    stack = (node.meta.get("nn_module_stack") or {}) if node is not None else {}
    return list(stack.values())[-1][0] if stack else name


def _describe(gm, g: Group, kept: list[int] | None) -> dict:
    kind = "heads" if g.heads else ("conv" if any(
        a.role == "producer" and _get(gm, a.target).dim() > 2 for a in g.actions) else "linear")
    return {"kind": kind, "producers": [_layer_of(gm, p) for p in g.producers],
            "units": g.units, "unit_channels": g.unit_channels(),
            "kept": kept, "approx_norm": g.approx}
