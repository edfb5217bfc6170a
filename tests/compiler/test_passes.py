"""The pass manager: passes by name, the failing one named, the graph linted after each."""

from __future__ import annotations

import pytest
import torch

from layerwise.base.errors import LayerwiseError
from layerwise.compiler import passes
from layerwise.compiler.passes import PassError, run_passes
from layerwise.sources import Source


class Tiny(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + 1


@pytest.fixture(scope="module")
def ir():
    from layerwise.compiler.frontend import lift

    return lift(Source("tiny", Tiny(), {"x": torch.randn(2, 4)}, "tabular"))


def _broken(ir):
    raise ValueError("bad index 7")


def _user_error(ir):
    raise LayerwiseError("no layer named foo")


def _unlinted(ir):
    """Leaves a node used before it is defined (lint must catch it)."""
    graph = ir.program.graph
    relu = next(n for n in graph.nodes if n.op == "call_function")
    add = next(iter(relu.users))
    add.prepend(relu)  # no-op order change is fine ...
    relu.prepend(add)  # ... this one puts the user first
    return ir


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(passes.PASSES, "broken", f"{__name__}:_broken")
    monkeypatch.setitem(passes.PASSES, "user_error", f"{__name__}:_user_error")
    monkeypatch.setitem(passes.PASSES, "unlinted", f"{__name__}:_unlinted")


def test_failing_pass_is_named_with_those_before_it(ir, registered):
    with pytest.raises(PassError, match=r"pass 'broken' failed after legalize_views: "
                                        r"ValueError: bad index 7"):
        run_passes(ir, ["legalize_views", "broken"])


def test_user_errors_keep_their_type(ir, registered):
    with pytest.raises(LayerwiseError, match=r"pass 'user_error' .*no layer named foo"):
        run_passes(ir, ["user_error"])


def test_graph_is_linted_after_each_pass(registered):
    from layerwise.compiler.frontend import lift

    fresh = lift(Source("tiny", Tiny(), {"x": torch.randn(2, 4)}, "tabular"))
    with pytest.raises(PassError, match=r"pass 'unlinted' failed.*used before it has been"):
        run_passes(fresh, ["unlinted"])


def test_passes_run_in_order(ir):
    out = run_passes(ir, ["legalize_views", "unguard_softmax"])
    torch.testing.assert_close(out.run()[0], ir.run()[0])
