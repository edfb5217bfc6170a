"""Per-layer INT8 sensitivity, planted: of two equal linears, the one whose input carries a
few huge outlier features (one per-tensor uint8 scale leaves the rest a handful of levels)
is the sensitive one; simulating a layer in int8 only touches that layer."""

from __future__ import annotations

import torch
from torch import nn

from layerwise.analysis.quant_sensitivity import (
    fake_int8_weight,
    fake_uint8,
    sensitivity,
    weighted_ops,
)
from layerwise.compiler.frontend import lift
from layerwise.sources import Source


class TwoPaths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calm = nn.Linear(16, 16)
        self.spiky = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)
        with torch.no_grad():  # the outliers' weights shrink by as much: same function
            self.spiky.weight[:, :2] /= 500.0

    def forward(self, x):
        spikes = torch.cat([x[:, :2] * 500.0, x[:, 2:]], dim=1)  # two outlier features
        return self.head(self.calm(x) + self.spiky(spikes))


def test_the_outlier_fed_layer_is_the_sensitive_one():
    torch.manual_seed(0)
    ir = lift(Source("two", TwoPaths().eval(), {"x": torch.randn(4, 16)}, "tabular"))
    assert set(weighted_ops(ir.module())) == {"calm", "spiky", "head"}
    batches = [{"x": torch.randn(16, 16)} for _ in range(3)]
    err = sensitivity(ir, batches)
    assert set(err) == {"calm", "spiky", "head"}
    assert err["spiky"] > 5 * max(err["calm"], err["head"]) and err["calm"] > 0
    assert set(sensitivity(ir, batches, layers=["calm"])) == {"calm"}


def test_fake_quantizers_round_to_the_grid():
    w = torch.tensor([[1.0, -0.5, 0.25], [10.0, 3.0, -7.0]])
    q = fake_int8_weight(w, 0)
    assert torch.allclose(q[0], w[0], atol=1 / 127 / 2 + 1e-7)  # row scale 1/127
    assert (q[1] / (10.0 / 127)).sub((q[1] / (10.0 / 127)).round()).abs().max() < 1e-4
    x = torch.linspace(-1, 3, 9)
    y = fake_uint8(x, -1.0, 3.0)
    assert (y - x).abs().max() <= 4 / 255 / 2 + 1e-6
    assert fake_uint8(torch.tensor([5.0]), -1.0, 3.0).item() <= 3.0 + 1e-6  # clipped
