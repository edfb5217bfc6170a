"""drop_layers: the block's nodes leave the graph, the rest computes what the model without
that module computes, consecutive drops compose, and shape-changing blocks are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.frontend import lift
from layerwise.compiler.passes import get_pass
from layerwise.compiler.passes.drop_layers import DropLayersError
from layerwise.sources import Source, load_source
from tests.analysis.planted import ResMLP


def _mlp():
    torch.manual_seed(0)
    model = ResMLP().eval()
    x = torch.randn(2, 16)
    return model, lift(Source("mlp", model, {"x": x}, "tabular")), x


def _without(model: nn.Module, drop: list[int]) -> nn.Module:
    m = copy.deepcopy(model)
    m.blocks = nn.ModuleList([b for i, b in enumerate(m.blocks) if i not in drop])
    return m


@pytest.mark.parametrize("drop", [[1], [2, 3], [0, 5]])
def test_drop_equals_deleting_the_modules(drop):
    model, ir, x = _mlp()
    out = get_pass("drop_layers")(ir, [f"blocks.{i}" for i in drop])
    out.program.graph.lint()
    # Before / Expected: none of the dropped blocks' nodes or weights remain
    assert [b.path for b in out.layers if b.block] == \
        [f"blocks.{i}" for i in range(6) if i not in drop]
    assert not any(k.startswith(tuple(f"blocks.{i}." for i in drop))
                   for k in out.program.state_dict)
    assert out.params < ir.params
    with torch.no_grad():
        expected = _without(model, drop)(x)
    torch.testing.assert_close(out.run({"x": x})[0], expected, rtol=1e-5, atol=1e-6)
    assert out.annotations["passes"][-1]["dropped"] == [f"blocks.{i}" for i in drop]
    torch.testing.assert_close(out.reference[0], ir.reference[0])  # fidelity stays vs original


def test_dropped_program_runs_with_another_batch():
    model, ir, _ = _mlp()
    out = get_pass("drop_layers")(ir, ["blocks.4"])
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(out.module()(x=x), _without(model, [4])(x),
                                   rtol=1e-5, atol=1e-6)


class Down(nn.Module):
    """A residual unit that changes the channel count: no identity can replace it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c, 2 * c, 1)
        self.conv = nn.Conv2d(2 * c, 2 * c, 3, padding=1)

    def forward(self, x):
        y = self.expand(x)
        return y + self.conv(y)


class Pyramid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Down(4), Down(8)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x.mean((2, 3))


def test_refuses_shape_changing_block():
    ir = lift(Source("pyr", Pyramid().eval(), {"x": torch.randn(2, 4, 8, 8)}, "vision"))
    assert [b.path for b in ir.layers if b.block] == ["blocks.0", "blocks.1"]
    with pytest.raises(DropLayersError, match="no input with the shape of its output"):
        get_pass("drop_layers")(ir, ["blocks.0"])
    with pytest.raises(LayerwiseError, match=r"no layer 'blocks\.9'"):
        get_pass("drop_layers")(ir, ["blocks.9"])


def test_t5_encoder_and_decoder_blocks(hf_folders):
    src = load_source(f"hf:{hf_folders['t5']}")
    ir = lift(src)
    paths = [b.path for b in ir.layers if b.block]
    enc = next(p for p in paths if "encoder" in p and p.endswith(".1"))
    dec = next(p for p in paths if "decoder" in p and p.endswith(".1"))
    out = get_pass("drop_layers")(ir, [enc, dec])
    out.program.graph.lint()
    left = [b.path for b in out.layers]
    assert enc not in left and dec not in left
    assert enc.replace(".1", ".0") in left and dec.replace(".1", ".0") in left
    model = copy.deepcopy(src.module)
    for stack in (model.encoder, model.decoder):
        stack.block = nn.ModuleList([b for i, b in enumerate(stack.block) if i != 1])
    with torch.no_grad():
        expected = model(**src.inputs).last_hidden_state
    torch.testing.assert_close(out.run()[0], expected, rtol=1e-4, atol=1e-5)
