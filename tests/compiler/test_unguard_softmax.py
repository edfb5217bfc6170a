"""unguard_softmax: Before / Expected on the graph of F.scaled_dot_product_attention, the
numbers still match, and masked scores keep their guard."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layerwise.compiler.frontend import lift
from layerwise.compiler.passes import get_pass
from layerwise.sources import Source

aten = torch.ops.aten
GUARD = (aten.eq.Scalar, aten.logical_not.default, aten.any.dim, aten.full_like.default,
         aten.where.self)


class Attention(nn.Module):
    """Two SDPA layers; `mask`: 'none', 'bool' (masked_fill to -inf inside SDPA) or 'add'."""

    def __init__(self, mask: str = "none") -> None:
        super().__init__()
        self.mask = mask
        self.qkv = nn.ModuleList(nn.Linear(32, 96) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        m = None
        if self.mask == "bool":
            m = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        elif self.mask == "add":
            m = torch.zeros(n, n, device=x.device).masked_fill(
                torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        for qkv in self.qkv:
            q, k, v = qkv(x).view(x.shape[0], n, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
            x = x + F.scaled_dot_product_attention(q, k, v, attn_mask=m).transpose(
                1, 2).reshape(x.shape)
        return x


def _lift(mask: str):
    torch.manual_seed(0)
    model = Attention(mask).eval()
    return model, lift(Source("attn", model, {"x": torch.randn(2, 7, 32)}, "tabular"))


def _count(ir, ops) -> int:
    return sum(1 for n in ir.program.graph.nodes if n.target in ops)


def _guards(ir) -> int:
    """`_safe_softmax` guards in the graph, as the pass recognises them."""
    from layerwise.compiler.passes.unguard_softmax import _guard_of

    return sum(_guard_of(n) is not None for n in ir.program.graph.nodes)


def test_unmasked_attention_loses_its_guard():
    model, ir = _lift("none")
    ref = ir.run()
    before = _count(ir, GUARD)
    assert before == 2 * 6 and _guards(ir) == 2  # Before: eq, not, any, not, full_like,
    # where per attention
    softmaxes = _count(ir, {aten._softmax.default})
    ir = get_pass("unguard_softmax")(ir)
    ir.program.graph.lint()
    # Expected: the softmaxes feed the value matmuls directly, no guard op is left
    assert _count(ir, GUARD) == 0 and _guards(ir) == 0
    assert _count(ir, {aten._softmax.default}) == softmaxes == 2
    for s in (n for n in ir.program.graph.nodes if n.target is aten._softmax.default):
        assert {u.target for u in s.users} <= {aten.expand.default, aten.clone.default,
                                                aten.view.default, aten.bmm.default}
    live = {n.name for n in ir.program.graph.nodes}
    assert all(n in live for layer in ir.layers for n in layer.nodes)
    for a, b in zip(ir.run(), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    x = torch.randn(5, 7, 32)  # another batch, through the dynamic dimension
    with torch.no_grad():
        torch.testing.assert_close(ir.run({"x": x})[0], model(x), rtol=1e-5, atol=1e-6)
    assert ir.annotations["passes"][-1] == {"name": "unguard_softmax", "rewritten": 2}


@pytest.mark.parametrize("mask", ["bool", "add"])
def test_masked_scores_keep_the_guard(mask):
    _, ir = _lift(mask)
    before = _count(ir, GUARD)  # the guards' ops and the mask's own
    assert _guards(ir) == 2  # torch 2.14 guards masked SDPA too
    ref = ir.run()
    ir = get_pass("unguard_softmax")(ir)
    assert _guards(ir) == 2 and _count(ir, GUARD) == before
    assert ir.annotations["passes"][-1]["rewritten"] == 0
    for a, b in zip(ir.run(), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_onnx_bundle_has_no_guard_and_verifies(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from layerwise import api

    src = tmp_path / "attn.py"
    src.write_text("import torch\nfrom tests.compiler.test_unguard_softmax import Attention\n"
                   "def build():\n    torch.manual_seed(0)\n"
                   "    return Attention().eval(), {'x': torch.randn(2, 7, 32)}, 'tabular'\n")
    m = api.compile(f"{src}:build", api.CompileOptions(out=str(tmp_path / "b"), db="none"))
    assert m["verification"]["passed"] and m["verification"]["rel_err"] < 1e-6
    ops = {n.op_type for n in onnx.load(str(tmp_path / "b" / "model.onnx")).graph.node}
    assert "Softmax" in ops and not ops & {"Where", "Not", "Equal", "ReduceMax"}
