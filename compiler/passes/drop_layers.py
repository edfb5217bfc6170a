"""Drop residual blocks: route each block's hidden-state input to its output's users.

Works on the unlifted graph module, so it is the same rewrite for every architecture: find the
block's boundary (the hidden-state input whose shape equals the output's), replace all uses of
the output with that input, remove dead nodes and unused submodules, and re-export with
torch.export so the result is again an ExportedProgram with a rebuilt layer table.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import fx

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.ir import IR
from layerwise.compiler.layers import Layer


class DropLayersError(LayerwiseError):
    """A block that cannot be dropped (no same-shape hidden-state input, unknown path)."""


def _shape_text(node: fx.Node) -> tuple[str, ...] | None:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(map(str, val.shape))  # as text: comparing SymInts would add guards


def block_boundary(graph: fx.Graph, layer: Layer) -> tuple[fx.Node, fx.Node]:
    """(hidden-state input, output) nodes of `layer` in `graph`.

    Assumes `graph` holds the layer's nodes under the names in the layer table (true for the
    program graph and for its unlifted module). The hidden-state input is the boundary input
    with the output's shape that is nearest to the output inside the block (the residual path;
    an encoder-decoder block's encoder states reach the output only through attention).
    """
    by_name = {n.name: n for n in graph.nodes}
    members = {by_name[n] for n in layer.nodes if n in by_name}
    inputs = [by_name[n] for n in layer.inputs if n in by_name]
    outputs = [by_name[n] for n in layer.outputs if n in by_name]
    best: tuple[int, int, fx.Node, fx.Node] | None = None
    for rank, out in enumerate(outputs):
        shape = _shape_text(out)
        if shape is None:
            continue
        dist = _distances_back(out, members)
        for inp in inputs:
            if _shape_text(inp) == shape and inp in dist:
                key = (dist[inp], -rank)
                if best is None or key < best[:2]:
                    best = (dist[inp], -rank, inp, out)
    if best is None:
        raise DropLayersError(
            f"layer {layer.path!r} has no input with the shape of its output, so it cannot be "
            "replaced by the identity; drop a block whose input and output shapes match")
    return best[2], best[3]


def _distances_back(out: fx.Node, members: set[fx.Node]) -> dict[fx.Node, int]:
    """Hops from `out` back to every node it depends on, walking inside `members` only."""
    dist = {out: 0}
    queue = deque([out])
    while queue:
        node = queue.popleft()
        if node is not out and node not in members:
            continue  # a boundary input: record it, do not walk past it
        for a in node.all_input_nodes:
            if a not in dist:
                dist[a] = dist[node] + 1
                queue.append(a)
    return dist


def rewire_identity(gm: fx.GraphModule, layers: list[Layer]) -> list[tuple[str, str]]:
    """Replace each layer by the identity in `gm` (in place) and clean up; returns the
    (input, output) node names used. Boundaries are found before any rewiring."""
    pairs = [block_boundary(gm.graph, layer) for layer in layers]
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    # last block first: a later block's input may be an earlier dropped block's output, whose
    # uses (including the ones just redirected) then move on to that block's own input
    for inp, out in sorted(pairs, key=lambda p: -order[p[1]]):
        out.replace_all_uses_with(inp)
    dropped = {n for layer in layers for n in layer.nodes}

    def impure(node: fx.Node) -> bool:
        # metadata assertions inside a dropped block would keep the whole block alive
        return node.name not in dropped and node.is_impure()

    gm.graph.eliminate_dead_code(is_impure_node=impure)
    gm.delete_all_unused_submodules()
    _delete_unused_parameters(gm)
    gm.recompile()
    return [(inp.name, out.name) for inp, out in pairs]


def _delete_unused_parameters(gm: fx.GraphModule) -> None:
    """Remove parameters no get_attr reads any more (a dropped layer of a stacked LSTM keeps
    its module, which still holds the other layers' weights)."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()):
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, leaf)


def drop_layers(ir: IR, paths: list[str] | tuple[str, ...]) -> IR:
    """A new IR without the given blocks (each replaced by the identity on its hidden state).

    Raises DropLayersError for an unknown path or a block whose output shape differs from
    every input's. The reference outputs stay those of the original model.
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        return ir
    known = {layer.path: layer for layer in ir.layers}
    missing = [p for p in paths if p not in known]
    if missing:
        blocks = [layer.path for layer in ir.layers if layer.block]
        raise DropLayersError(f"no layer {missing[0]!r} in this model; blocks are: "
                              f"{', '.join(blocks) or 'none'}")
    gm = ir.module()
    pairs = rewire_identity(gm, [known[p] for p in paths])
    try:
        return ir.rebuilt(gm, {"name": "drop_layers", "dropped": list(paths),
                               "rewired": [list(p) for p in pairs]})
    except Exception as e:  # noqa: BLE001 - export failures come in many types
        raise DropLayersError(f"re-exporting after dropping {list(paths)} failed: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200]}; drop fewer "
                              "blocks or report the model") from e
