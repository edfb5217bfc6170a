"""Probes: instrumented copies of the IR's graph module that analysis runs instead of the model.

A probe is the unlifted graph with plain calling conventions (inputs by position, outputs as a
flat tuple) that also returns chosen intermediate tensors ("taps"), and optionally routes every
droppable block's output through a gate

    out' = in + alpha[i] * (out - in) + beta[i] * roll(out - in, 1, batch)

whose buffers an intervention sets: alpha = 0 drops block i, alpha = 0 and beta = 1 patches in
the update computed for another sample (resample ablation), alpha in (0, 1) scales it. With
alpha = 1 and beta = 0 the probe computes the model. The IR itself is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from layerwise.compiler.ir import IR
from layerwise.compiler.layers import blocks
from layerwise.compiler.passes.drop_layers import DropLayersError, block_boundary

aten = torch.ops.aten


@dataclass(frozen=True, slots=True)
class Site:
    """A block as analysis sees it: its hidden-state input and output node names.

    `hidden` is None for a block whose output shape matches none of its inputs (not droppable).
    """

    index: int
    path: str
    group: str | None
    output: str
    hidden: str | None

    @property
    def droppable(self) -> bool:
        return self.hidden is not None


def find_sites(ir: IR) -> list[Site]:
    """One Site per block of the layer table, in graph order."""
    graph = ir.program.graph
    sites = []
    for i, layer in enumerate(blocks(ir.layers)):
        try:
            inp, out = block_boundary(graph, layer)
            sites.append(Site(i, layer.path, layer.group, out.name, inp.name))
        except DropLayersError:
            outs = [n for n in layer.outputs]
            sites.append(Site(i, layer.path, layer.group, outs[-1] if outs else "", None))
    return sites


class Probe:
    """An instrumented copy of `ir.module()`; call it with a dict of named inputs."""

    def __init__(self, ir: IR, sites: list[Site], taps: list[str] = (), gates: bool = False,
                 patch: bool = False) -> None:
        gm = ir.module()
        graph = gm.graph
        by_name = {n.name: n for n in graph.nodes}
        self.input_names = [n.name for n in graph.nodes if n.op == "placeholder"]
        out_node = next(n for n in graph.nodes if n.op == "output")
        self.n_outputs = len(out_node.args[0]) if isinstance(out_node.args[0], (tuple, list)) \
            else 1
        gated: dict[str, fx.Node] = {}
        batch = _batch_symbol(graph)
        if gates:
            n = len(sites)
            gm.register_buffer("_lw_alpha", torch.ones(n))
            gm.register_buffer("_lw_beta", torch.zeros(n))
            for site in sites:
                if site.droppable:
                    hidden = gated.get(site.hidden, by_name[site.hidden])  # chained blocks
                    gated[site.output] = _insert_gate(graph, hidden, by_name[site.output],
                                                      site.index, patch, batch=batch)
        self.tap_names = list(taps)
        tap_nodes = [gated.get(t, by_name[t]) for t in self.tap_names]
        flat = list(out_node.args[0]) if isinstance(out_node.args[0], (tuple, list)) \
            else [out_node.args[0]]
        out_node.args = (tuple(flat + tap_nodes),)
        graph.set_codegen(fx.graph.CodeGen())
        gm._forward_pre_hooks.clear()  # the unlifted module checks inputs against its pytree
        gm.recompile()
        self.gm = gm
        self.sites = sites

    def set_gates(self, alpha: torch.Tensor | None = None, beta: torch.Tensor | None = None
                  ) -> None:
        """Set the gate buffers (defaults: alpha all ones, beta all zeros: the model)."""
        n = len(self.sites)
        with torch.no_grad():
            self.gm._lw_alpha.copy_(alpha if alpha is not None else torch.ones(n))
            self.gm._lw_beta.copy_(beta if beta is not None else torch.zeros(n))

    def __call__(self, inputs: dict[str, torch.Tensor]
                 ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        args = [inputs[name] for name in self.input_names]
        res = self.gm(*args)
        res = list(res) if isinstance(res, (tuple, list)) else [res]
        outs = res[: self.n_outputs]
        return outs, dict(zip(self.tap_names, res[self.n_outputs:]))

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.gm.parameters())

    def named_parameters(self):
        return self.gm.named_parameters()


def _batch_symbol(graph: fx.Graph) -> str | None:
    """The first input's leading size as text (the batch symbol when the batch is dynamic)."""
    for n in graph.nodes:
        val = n.meta.get("val")
        if n.op == "placeholder" and isinstance(val, torch.Tensor) and val.dim() > 0:
            return str(val.shape[0])
    return None


def _batch_dim(node: fx.Node, batch: str | None) -> int:
    """Which dim of `node` is the batch: the one sized by the batch symbol (time-major
    recurrent states carry it second), else 0."""
    val = node.meta.get("val")
    if batch is not None and isinstance(val, torch.Tensor):
        for i, d in enumerate(val.shape):
            if str(d) == batch and not batch.isdigit():
                return i
    return 0


def _insert_gate(graph: fx.Graph, hidden: fx.Node, out: fx.Node, index: int, patch: bool,
                 *, batch: str | None = None) -> fx.Node:
    """Insert the gate after `out` and route out's users through it; returns the gate node.
    The result has contiguous strides when `out` had them (later views rely on it)."""
    users = list(out.users)
    with graph.inserting_after(out):
        alpha_all = graph.get_attr("_lw_alpha")
    with graph.inserting_after(alpha_all):
        alpha = graph.call_function(aten.select.int, (alpha_all, 0, index))
    with graph.inserting_after(alpha):
        delta = graph.call_function(aten.sub.Tensor, (out, hidden))
    with graph.inserting_after(delta):
        scaled = graph.call_function(aten.mul.Tensor, (delta, alpha))
    with graph.inserting_after(scaled):
        gate = graph.call_function(aten.add.Tensor, (hidden, scaled))
    last = gate
    if patch:
        with graph.inserting_after(gate):
            beta_all = graph.get_attr("_lw_beta")
        with graph.inserting_after(beta_all):
            beta = graph.call_function(aten.select.int, (beta_all, 0, index))
        with graph.inserting_after(beta):
            rolled = graph.call_function(aten.roll.default,
                                         (delta, [1], [_batch_dim(out, batch)]))
        with graph.inserting_after(rolled):
            patched = graph.call_function(aten.mul.Tensor, (rolled, beta))
        with graph.inserting_after(patched):
            last = graph.call_function(aten.add.Tensor, (gate, patched))
    val = out.meta.get("val")
    if isinstance(val, torch.Tensor) and val.is_contiguous():
        with graph.inserting_after(last):
            last = graph.call_function(aten.clone.default, (last,),
                                       {"memory_format": torch.contiguous_format})
    for user in users:
        user.replace_input_with(out, last)
    last.meta["val"] = out.meta.get("val")
    return last
