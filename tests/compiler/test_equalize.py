"""Cross-layer range equalization on the IR (compiler/passes/equalize.py), planted: a conv whose
output channels span ranges 100x apart, through batch norm and ReLU6, into a depthwise and
then a pointwise conv."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from layerwise.compiler.frontend import lift
from layerwise.compiler.passes.equalize import channel_maxima, equalizable, equalize_ir, equalized
from layerwise.compiler.pipeline import finish
from layerwise.sources import Source

SPREAD = np.geomspace(0.02, 2.0, 8)  # each channel's scale: 100x apart


class Spread(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 4, 1)
        with torch.no_grad():  # every channel matters as much to the output
            self.bn.weight.copy_(torch.from_numpy(SPREAD).float())
            self.bn.bias.zero_()
            self.pw.weight /= torch.from_numpy(SPREAD).float().reshape(1, -1, 1, 1)

    def forward(self, x):
        y = nn.functional.relu6(self.bn(self.a(x)))
        return self.pw(nn.functional.relu(self.dw(y)))


@pytest.fixture(scope="module")
def spread():
    torch.manual_seed(0)
    ir = lift(Source("spread", Spread().eval(), {"x": torch.randn(2, 3, 16, 16)}, "vision"))
    batches = [{"x": torch.randn(4, 3, 16, 16)} for _ in range(4)]
    return ir, batches


def test_finds_both_pairs(spread):
    ir, _ = spread
    kinds = [(p[1] is not None, p[4]) for p in equalizable(ir.module())]
    assert kinds == [(True, "dw"), (False, "pw")]  # a -> bn -> relu6 -> dw; dw -> relu -> pw


def test_channels_reach_the_tensor_range_and_the_function_is_kept(spread):
    ir, batches = spread
    before = {k: v.clone() for k, v in ir.program.state_dict.items()}
    eq, done = equalize_ir(ir, batches, depthwise=1.0, pointwise=0.5, max_scale=16.0)
    assert done == 2
    assert all(torch.equal(before[k], v) for k, v in ir.program.state_dict.items())
    gm, gm_eq = ir.module(), eq.module()
    act, act_eq = equalizable(gm)[0][2], equalizable(gm_eq)[0][2]
    r0 = channel_maxima(gm, [act], batches)[act]
    r1 = channel_maxima(gm_eq, [act_eq], batches)[act_eq]
    assert r0.max() / r0.min() > 30  # planted: the channels' ranges far apart
    # alpha 1 into the depthwise conv: each channel up to the tensor's range, at most 16x
    expected = r0 * np.clip(r0.max() / r0, 1.0, 16.0)
    np.testing.assert_allclose(r1, expected, rtol=1e-3)
    x = {"x": torch.randn(2, 3, 16, 16)}
    np.testing.assert_allclose(eq.run(x)[0].numpy(), ir.run(x)[0].numpy(), rtol=1e-4,
                               atol=1e-5)


def test_the_pass_follows_the_recipe_and_leaves_fp32_layers(spread):
    """Run as a pipeline step after quantize: static int8 with an equalizing recipe
    equalizes both pairs over ir.calibration; a pair touching a layer kept in fp32, another
    precision or a recipe without equalization leaves the IR as it is."""
    from dataclasses import replace

    from layerwise.base.recipe import QuantRecipe

    ir, batches = spread
    ir.calibration = [{"x": b["x"][i:i + 1].numpy()} for b in batches for i in range(4)]
    recipe = QuantRecipe(equalize_depthwise=1.0, equalize_pointwise=0.5)

    def run(keep=(), precision="int8", r=recipe):
        return finish(ir, [], [], {"recipe": r, "keep_fp32": list(keep),
                                   "precision": precision})

    assert equalized(run()) == 2
    assert equalized(run(keep=["dw"])) == 0  # both pairs touch the depthwise conv
    assert equalized(run(keep=["pw"])) == 1
    assert equalized(run(precision="int8-dynamic")) == 0
    assert equalized(run(r=replace(recipe, equalize_depthwise=0.0))) == 1
    assert equalized(run(r=replace(recipe, per_channel=False))) == 0
    assert "quantize" not in ir.annotations  # finish works on a copy


def test_equalized_int8_is_closer_to_fp32(spread, tmp_path):
    pytest.importorskip("ai_edge_litert")
    from layerwise.runtime import open_runner
    from layerwise.targets.tflite import calibrate_ranges, emit_tflite

    ir, batches = spread
    eq, _ = equalize_ir(ir, batches, depthwise=1.0, pointwise=0.5, max_scale=16.0)
    x = {"x": torch.randn(8, 3, 16, 16)}
    ref = ir.run(x)[0].numpy()
    err = {}
    for name, model in (("plain", ir), ("equalized", eq)):
        path = tmp_path / f"{name}.tflite"
        emit_tflite(model, path, precision="int8",
                    ranges=calibrate_ranges(model, batches, method="mean_minmax"))
        out = open_runner("tflite", path).run({"x": x["x"].numpy()})[0]
        err[name] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    print(f"\nint8 rel_err to fp32: {err}")
    assert err["equalized"] < 0.7 * err["plain"]
