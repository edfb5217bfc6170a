"""Rewrite passes: plain functions IR -> IR, found by name in one table.

Each entry maps a pass name to "module:function"; modules are imported when a pass is used.
"""

from __future__ import annotations

from collections.abc import Callable

from layerwise.base.errors import LayerwiseError

PASSES: dict[str, str] = {
    "legalize_views": "layerwise.compiler.passes.legalize:legalize_views",
    "unguard_softmax": "layerwise.compiler.passes.unguard_softmax:unguard_softmax",
    "quantize": "layerwise.compiler.passes.quantize:quantize",
    "drop_layers": "layerwise.compiler.passes.drop_layers:drop_layers",
    "prune": "layerwise.compiler.passes.prune:prune",
}


def get_pass(name: str) -> Callable:
    """The pass function registered under `name`."""
    from layerwise.base.registry import find

    return find("layerwise.passes", name, PASSES, LayerwiseError, "pass")


def run_passes(ir, names: list[str]):
    """Apply passes in order; returns the final IR."""
    for name in names:
        ir = get_pass(name)(ir)
    return ir
