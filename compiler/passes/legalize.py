"""Legalizations: rewrites that keep semantics but suit a backend's importer."""

from __future__ import annotations

import torch

aten = torch.ops.aten


def _record(ir, name: str, changed: int):
    """Recompile after `changed` rewrites and note the pass in the IR's annotations."""
    if changed:
        ir.program.graph_module.recompile()
    ir.annotations.setdefault("passes", []).append({"name": name, "rewritten": changed})
    return ir


def _calls(graph, target) -> list:
    """The graph's calls of `target`, listed first (a pass may rewrite them as it goes)."""
    return [n for n in graph.nodes if n.op == "call_function" and n.target is target]


def legalize_views(ir):
    """Rewrite every `aten.view` to `aten.reshape` (in place; returns the same IR).

    Assumes a decomposed program. torch.onnx's own decomposition cannot always re-view a
    non-contiguous tensor (T5's attention), while reshape copies when it must.
    """
    gm = ir.program.graph_module
    changed = 0
    for node in _calls(gm.graph, aten.view.default):
        node.target = aten.reshape.default
        changed += 1
    return _record(ir, "legalize_views", changed)


def legalize_copies(ir):
    """Rewrite every functional `aten.copy(dst, src)` (src broadcast into dst's shape and
    dtype) as `zeros_like(dst) + src`, cast to dst's dtype (in place; returns the same IR).

    torch.onnx lowers copy to src itself, unbroadcast: Swin's attention mask, filled by
    copying a scalar into slices, then fails onnxruntime's shape inference.
    """
    gm = ir.program.graph_module
    graph, changed = gm.graph, 0
    for node in _calls(graph, aten.copy.default):
        dst, src = node.args[0], node.args[1]
        dtype = node.meta["val"].dtype
        with graph.inserting_before(node):
            zeros = graph.call_function(aten.zeros_like.default, (dst,))
            zeros.meta["val"] = node.meta["val"]
            total = graph.call_function(aten.add.Tensor, (zeros, src))
            total.meta["val"] = node.meta["val"]
            new = total
            src_val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
            if src_val is None or src_val.dtype != dtype:
                new = graph.call_function(aten._to_copy.default, (total,), {"dtype": dtype})
                new.meta["val"] = node.meta["val"]
        for key in ("nn_module_stack", "stack_trace"):
            if key in node.meta:
                for n in {zeros, total, new}:
                    n.meta[key] = node.meta[key]
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        changed += 1
    return _record(ir, "legalize_copies", changed)


def _call(graph, like, target, args, kwargs=None):
    """A call_function node before `like`, its meta value computed from its inputs' (fake)
    values, keeping `like`'s module stack (layer table attribution)."""
    kwargs = kwargs or {}
    node = graph.call_function(target, tuple(args), kwargs)

    def val(a):
        return a.meta["val"] if isinstance(a, torch.fx.Node) else a

    node.meta["val"] = target(*torch.fx.node.map_aggregate(tuple(args), val),
                              **torch.fx.node.map_aggregate(kwargs, val))
    for key in ("nn_module_stack", "stack_trace"):
        if key in like.meta:
            node.meta[key] = like.meta[key]
    return node


def decompose_group_norm(ir):
    """Rewrite `native_group_norm` as its arithmetic (per-group mean and variance over
    reshaped channels, then the per-channel affine) for backends without a group-norm op
    (in place; returns the same IR). Assumes eval: only the normalised output is used."""
    import operator

    gm = ir.program.graph_module
    graph, changed = gm.graph, 0
    for node in _calls(graph, aten.native_group_norm.default):
        x, w, b, n, c, _hw, groups, eps = node.args[:8]
        users = list(node.users)
        if any(u.target is not operator.getitem or u.args[1] != 0 for u in users):
            continue  # mean / rstd read by something: leave it to the backend
        shape = list(node.meta["val"][0].shape)
        with graph.inserting_before(node):
            flat = _call(graph, node, aten.reshape.default, [x, [n, groups, -1]])
            mean = _call(graph, node, aten.mean.dim, [flat, [2], True])
            diff = _call(graph, node, aten.sub.Tensor, [flat, mean])
            sq = _call(graph, node, aten.mul.Tensor, [diff, diff])
            var = _call(graph, node, aten.mean.dim, [sq, [2], True])
            rstd = _call(graph, node, aten.rsqrt.default,
                         [_call(graph, node, aten.add.Tensor, [var, eps])])
            y = _call(graph, node, aten.mul.Tensor, [diff, rstd])
            y = _call(graph, node, aten.reshape.default, [y, [n, c, *shape[2:]]])
            ones = [1] * (len(shape) - 2)
            if w is not None:
                y = _call(graph, node, aten.mul.Tensor,
                          [y, _call(graph, node, aten.reshape.default, [w, [c, *ones]])])
            if b is not None:
                y = _call(graph, node, aten.add.Tensor,
                          [y, _call(graph, node, aten.reshape.default, [b, [c, *ones]])])
        for u in users:
            u.replace_all_uses_with(y)
            graph.erase_node(u)
        graph.erase_node(node)
        changed += 1
    return _record(ir, "decompose_group_norm", changed)


def legalize_float_floor_divide(ir):
    """Rewrite a floor division of floating-point values (`floor_divide`, `div` with
    rounding_mode='floor') as `floor(a / b)` (in place; returns the same IR). TVM's importer
    emits a floor_divide whose float tensor meets an int constant and refuses it."""
    gm = ir.program.graph_module
    graph, changed = gm.graph, 0
    floor_divs = {aten.floor_divide.default, aten.floor_divide.Scalar}
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        mode = node.kwargs.get("rounding_mode") if node.target is aten.div.Tensor_mode else None
        if node.target not in floor_divs and mode != "floor":
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or not val.dtype.is_floating_point:
            continue
        a, b = node.args[:2]
        with graph.inserting_before(node):
            div = aten.div.Tensor if isinstance(b, torch.fx.Node) else aten.div.Scalar
            q = _call(graph, node, div, [a, float(b) if isinstance(b, (int, float)) else b])
            new = _call(graph, node, aten.floor.default, [q])
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        changed += 1
    return _record(ir, "legalize_float_floor_divide", changed)


def legalize_slice_scatter(ir):
    """Rewrite `slice_scatter(base, src, dim, start, end, 1)` as the concatenation of base's
    part before `start`, src, and base's part from `end` (in place; returns the same IR).
    TVM's slice_scatter needs every dimension constant, so a dynamic batch fails it (GhostNet
    writes its channel halves with it). Steps other than 1 are left alone."""
    gm = ir.program.graph_module
    graph, changed = gm.graph, 0
    for node in _calls(graph, aten.slice_scatter.default):
        base, src = node.args[:2]
        rank = len(node.meta["val"].shape)
        given = list(node.args[2:6])
        dim, start, end, step = [node.kwargs.get(k, d) for k, d in
                                 zip(("dim", "start", "end", "step"),
                                     given + [0, None, None, 1][len(given):], strict=True)]
        size = node.meta["val"].shape[dim % rank]
        whole = step == 1 and start in (None, 0) and (end is None or end >= 2**62)
        if whole:  # the whole axis (a dynamic batch's, too): the result is src itself
            node.replace_all_uses_with(src)
            graph.erase_node(node)
            changed += 1
            continue
        if step != 1 or not isinstance(size, int):
            continue
        start = 0 if start is None else (start + size if start < 0 else min(start, size))
        end = size if end is None else (end + size if end < 0 else min(end, size))
        with graph.inserting_before(node):
            parts = []
            if start > 0:
                parts.append(_call(graph, node, aten.slice.Tensor, [base, dim, 0, start]))
            parts.append(src)
            if end < size:
                parts.append(_call(graph, node, aten.slice.Tensor, [base, dim, end, size]))
            new = parts[0] if len(parts) == 1 else _call(graph, node, aten.cat.default,
                                                         [parts, dim])
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        changed += 1
    return _record(ir, "legalize_slice_scatter", changed)


def legalize_symbolic_repeat(ir):
    """Rewrite `repeat(x, reps)` whose run-time repeat counts (a dynamic batch) fall on axes
    of size 1 as a repeat by the static counts, then `expand` to the run-time sizes (in
    place; returns the same IR). TVM's tile needs constant repeats (WavLM's position bias,
    SigLIP's pooling probe repeat by the batch). Other repeats are left alone."""
    gm = ir.program.graph_module
    graph, changed = gm.graph, 0
    for node in _calls(graph, aten.repeat.default):
        x, reps = node.args[:2]
        sym = [isinstance(r, torch.fx.Node) for r in reps]
        shape = [1] * (len(reps) - x.meta["val"].dim()) + list(x.meta["val"].shape)
        if not any(sym) or any(s and d != 1 for s, d in zip(sym, shape, strict=True)):
            continue
        static = [1 if s else r for s, r in zip(sym, reps, strict=True)]
        with graph.inserting_before(node):
            y = x
            if static != [1] * len(reps) or len(reps) != x.meta["val"].dim():
                y = _call(graph, node, aten.repeat.default, [x, static])
            wide = _call(graph, node, aten.expand.default,
                         [y, [r if s else -1 for s, r in zip(sym, reps, strict=True)]])
            # repeat's result is contiguous (a later view relies on it); expand's is not
            new = _call(graph, node, aten.clone.default, [wide],
                        {"memory_format": torch.contiguous_format})
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        changed += 1
    return _record(ir, "legalize_symbolic_repeat", changed)


def legalize_negative_select(ir):
    """Rewrite `select(x, dim, i)` with a negative index counted from the end (`x[:, -1]`)
    as the same select with the index counted from the start where the axis has a static
    size, else as `slice(x, dim, i, i + 1)` then `squeeze(dim)` (in place; returns the same
    IR). TVM's frontend takes a negative index as is, out of bounds, which reads garbage
    (NaN in SigLIP's text pooler)."""
    gm = ir.program.graph_module
    graph, changed = gm.graph, 0
    for node in _calls(graph, aten.select.int):
        x, dim, index = node.args[:3]
        if not isinstance(index, int) or index >= 0:
            continue
        size = x.meta["val"].shape[dim]
        if isinstance(size, int):
            node.args = (x, dim, index + size)
        else:
            with graph.inserting_before(node):
                end = index + 1 if index + 1 < 0 else 2**63 - 1
                part = _call(graph, node, aten.slice.Tensor, [x, dim, index, end])
                new = _call(graph, node, aten.squeeze.dims, [part, [dim]])
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        changed += 1
    return _record(ir, "legalize_negative_select", changed)


def legalize_shared_weight_bmm(ir):
    """Rewrite `bmm(x, expand(w, [n, K, M]))`, a 2-d w (or [1, K, M]) expanded over the
    batch, possibly viewed to the same shape, as `matmul(x, w)` (in place; returns the same
    IR). nn.MultiheadAttention with a key apart from the query projects so; TVM's constant
    folding would write the expanded weights out, n copies each (ViT-B/16: 12 x 1.4 GB)."""
    gm = ir.program.graph_module
    graph, changed = gm.graph, 0
    for node in _calls(graph, aten.bmm.default):
        x, b = node.args[:2]
        chain = [b]
        while chain[-1].op == "call_function" and chain[-1].target in (
                aten.view.default, aten.reshape.default, aten._unsafe_view.default):
            chain.append(chain[-1].args[0])
        wide = chain[-1]
        if wide.op != "call_function" or wide.target is not aten.expand.default:
            continue
        w = wide.args[0]
        shape = tuple(b.meta["val"].shape)
        if tuple(wide.meta["val"].shape) != shape or tuple(w.meta["val"].shape) not in (
                shape[1:], (1, *shape[1:])):
            continue
        with graph.inserting_before(node):
            if w.meta["val"].dim() == 3:
                w = _call(graph, node, aten.squeeze.dims, [w, [0]])
            new = _call(graph, node, aten.matmul.default, [x, w])
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        for dead in chain:
            if not dead.users:
                graph.erase_node(dead)
        changed += 1
    return _record(ir, "legalize_shared_weight_bmm", changed)
