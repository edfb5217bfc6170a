"""Rewrite passes: plain functions IR -> IR, found by name in one table, run in order by
`run_passes`, which names a failing pass and lints the graph after each.

Each entry maps a pass name to "module:function"; modules are imported when a pass is used.
A pass takes the IR and, as keywords, the arguments its Step carries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from layerwise.base.errors import LayerwiseError

PASSES: dict[str, str] = {
    "legalize_views": "layerwise.compiler.passes.legalize:legalize_views",
    "legalize_copies": "layerwise.compiler.passes.legalize:legalize_copies",
    "decompose_group_norm": "layerwise.compiler.passes.legalize:decompose_group_norm",
    "legalize_float_floor_divide":
        "layerwise.compiler.passes.legalize:legalize_float_floor_divide",
    "legalize_slice_scatter": "layerwise.compiler.passes.legalize:legalize_slice_scatter",
    "legalize_symbolic_repeat": "layerwise.compiler.passes.legalize:legalize_symbolic_repeat",
    "legalize_negative_select": "layerwise.compiler.passes.legalize:legalize_negative_select",
    "legalize_shared_weight_bmm":
        "layerwise.compiler.passes.legalize:legalize_shared_weight_bmm",
    "unguard_softmax": "layerwise.compiler.passes.unguard_softmax:unguard_softmax",
    "quantize": "layerwise.compiler.passes.quantize:quantize",
    "equalize": "layerwise.compiler.passes.equalize:equalize",
    "heal": "layerwise.compiler.passes.heal:heal",
    "drop_layers": "layerwise.compiler.passes.drop_layers:drop_layers",
    "prune": "layerwise.compiler.passes.prune:prune",
}


def get_pass(name: str) -> Callable:
    """The pass function registered under `name`."""
    from layerwise.base.registry import find

    return find("layerwise.passes", name, PASSES, LayerwiseError, "pass")


@dataclass(frozen=True)
class Step:
    """One pass of a pipeline: its name, its keyword arguments, what progress says."""

    name: str
    args: dict = field(default_factory=dict)
    note: str = ""


def run_passes(ir, steps: list[str | Step], progress: Callable[[str], None] | None = None):
    """Apply passes (names or Steps) in order; returns the final IR. After each pass the
    graph is linted (topological order, node ownership). An error names the pass and the
    passes run before it: a user error (LayerwiseError) keeps its type, anything else is a
    PassError."""
    done: list[str] = []
    for item in steps:
        step = item if isinstance(item, Step) else Step(item)
        name = step.name
        fn = get_pass(name)
        if progress is not None and step.note:
            progress(step.note)
        try:
            ir = fn(ir, **step.args)
            ir.program.graph.lint()
        except LayerwiseError as e:
            raise type(e)(f"pass {name!r} (after {', '.join(done) or 'no other pass'}): "
                          f"{e}") from e
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise PassError(f"pass {name!r} failed after {', '.join(done) or 'no other pass'}:"
                            f" {type(e).__name__}: {first}") from e
        done.append(name)
    return ir


class PassError(RuntimeError):
    """A pass that broke (an internal error, not the user's): names the pass."""
