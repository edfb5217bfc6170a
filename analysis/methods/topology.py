"""Topology analysis (data-free): where a block sits in the compute graph (networkx).
Per block: betweenness centrality of its output node, the share of the graph downstream of it,
and the skip paths around it (edges from before the block to after it). A block scores its
betweenness centrality: how many shortest input-output paths funnel through it. It sees the
structure only, so two blocks of the same shape in a chain look alike whatever their weights."""

from __future__ import annotations

import networkx as nx

from layerwise.analysis.methods import MethodInfo, Result


def compute_graph(graph) -> nx.DiGraph:
    """Tensor data-flow graph of an fx graph (parameters and constants left out)."""
    g = nx.DiGraph()
    for node in graph.nodes:
        if node.op in ("call_function", "placeholder", "output"):
            g.add_node(node.name)
            for a in node.all_input_nodes:
                if a.op != "get_attr":
                    g.add_edge(a.name, node.name)
    return g


class TopologyAnalysis:
    """Graph position only: no data, no passes."""

    info = MethodInfo("topology_analysis", "static", data_free=True,
                      summary="betweenness, downstream share and skip paths in the graph")

    def __init__(self, samples: int = 256) -> None:
        self.samples = samples

    def run(self, ctx) -> Result:
        g = compute_graph(ctx.ir.program.graph)
        k = min(self.samples, g.number_of_nodes())
        bc = nx.betweenness_centrality(g, k=k, seed=ctx.seed)
        order = {n: i for i, n in enumerate(g.nodes)}
        scores = ctx.nan_scores()
        detail = {}
        total = max(g.number_of_nodes(), 1)
        for s in ctx.sites:
            members = set(ctx.layer(s.path).nodes)
            idx = [order[n] for n in members if n in order]
            if not idx or s.output not in g:
                continue
            lo, hi = min(idx), max(idx)
            skips = sum(1 for u, v in g.edges if order[u] < lo and order[v] > hi)
            scores[s.path] = bc.get(s.output, 0.0)
            detail[s.path] = {"betweenness": bc.get(s.output, 0.0),
                              "downstream_share": len(nx.descendants(g, s.output)) / total,
                              "skip_edges": skips}
        return Result(scores, {"blocks": detail, "nodes": total})
