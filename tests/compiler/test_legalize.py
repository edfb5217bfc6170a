"""legalize_views, legalize_copies: Before / Expected on the graph, plus the numbers still match."""

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


class MaskFill(torch.nn.Module):
    """Swin's shifted-window mask: scalars copied into slices of a constant grid."""

    def forward(self, x):
        mask = torch.zeros(x.shape[1], x.shape[2])
        count = 0
        for h in (slice(0, -2), slice(-2, None)):
            for w in (slice(0, -2), slice(-2, None)):
                mask[h, w] = count
                count += 1
        return x + mask


def test_copies_become_broadcast_adds_and_onnx_loads(tmp_path):
    import onnxruntime as ort

    from layerwise.sources import Source
    from layerwise.targets import onnx as onnx_target

    ir = lift(Source("mask", MaskFill().eval(), {"x": torch.randn(2, 4, 4)}, "tabular"))
    copies = _count(ir, aten.copy.default)
    assert copies > 0
    ref = ir.run()
    ir = get_pass("legalize_copies")(ir)
    assert _count(ir, aten.copy.default) == 0
    for a, b in zip(ir.run(), ref):
        torch.testing.assert_close(a, b)
    ir = get_pass("legalize_views")(ir)
    entry = onnx_target.emit(ir, tmp_path)
    sess = ort.InferenceSession(str(tmp_path / entry["file"]))
    got = sess.run(None, {"x": ir.example_inputs["x"].numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), ref[0])
