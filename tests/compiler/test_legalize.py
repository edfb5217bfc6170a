"""legalize_views: Before / Expected on the graph, plus the numbers still match."""

from __future__ import annotations

import torch

from layerwise.compiler.frontend import lift
from layerwise.compiler.passes import get_pass
from layerwise.sources import load_source
from tests.conftest import FIXTURES

aten = torch.ops.aten


def _count(ir, op) -> int:
    return sum(1 for n in ir.program.graph.nodes if n.target is op)


def test_views_become_reshapes():
    ir = lift(load_source(f"{FIXTURES}:lstm_classifier"))
    before_views, before_reshapes = _count(ir, aten.view.default), _count(ir, aten.reshape.default)
    assert before_views > 0
    ref = ir.run()
    ir = get_pass("legalize_views")(ir)
    assert _count(ir, aten.view.default) == 0
    assert _count(ir, aten.reshape.default) == before_reshapes + before_views
    for a, b in zip(ir.run(), ref):
        torch.testing.assert_close(a, b)
    assert ir.annotations["passes"][-1] == {"name": "legalize_views", "rewritten": before_views}
