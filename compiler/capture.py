"""Run a graph module node by node, keeping the values of named nodes: the hidden states
that pruning scores and healing matches. Gradients flow through the kept values."""

from __future__ import annotations

import torch
from torch import fx


class Capture(fx.Interpreter):
    """Runs the graph, keeping the values of some nodes (and, with `perturb`, adding a zero
    tensor that requires grad to each, so gradients there can be read)."""

    def __init__(self, gm, names: set[str], perturb: bool = False) -> None:
        super().__init__(gm)
        self.names, self.perturb = names, perturb
        self.values: dict[str, torch.Tensor] = {}
        self.eps: dict[str, torch.Tensor] = {}

    def run_node(self, n):
        val = super().run_node(n)
        if n.name in self.names and isinstance(val, torch.Tensor):
            if self.perturb and val.is_floating_point():
                self.eps[n.name] = torch.zeros_like(val, requires_grad=True)
                val = val + self.eps[n.name]
            self.values[n.name] = val
        return val

    def run_feed(self, feed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        args = [feed[p.target] for p in self.module.graph.nodes if p.op == "placeholder"]
        out = self.run(*args)
        return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
