"""Latency prediction: op records, roofline, host calibration on a small calibration set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from layerwise import api
from layerwise.base.errors import LayerwiseError
from layerwise.compiler.frontend import lift
from layerwise.devices import predict
from layerwise.devices.latency.calibrate import (
    Case,
    _Design,
    calibrate_host,
    calibration_cases,
    load_calibration,
)
from layerwise.devices.latency.graph_ops import op_records
from layerwise.devices.latency.roofline import (
    Factors,
    Machine,
    parallel_slowdown,
    predict_records,
    streams_dram,
    weight_tier,
)
from layerwise.sources import Source


class ConvNet(nn.Module):
    """Two residual conv blocks and a head; `width` scales the FLOPs."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, groups=width)) for _ in range(2))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x.mean((2, 3)))


def lifted(width: int = 16, size: int = 32):
    torch.manual_seed(0)
    return lift(Source("test:convnet", ConvNet(width).eval(),
                       {"x": torch.randn(2, 3, size, size)}, "vision"))


@pytest.fixture(scope="module")
def small():
    return lifted()


def normed():
    torch.manual_seed(0)
    return lift(Source("test:normed", nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32)).eval(),
                       {"input": torch.randn(2, 5, 16)}, "tabular"))


def test_records_count_conv_flops_and_fuse_bn_relu(small):
    recs, info = op_records(small.program, small.layers, batch=1)
    assert info == {"batch": 1, "batch_fixed": None}
    convs = [r for r in recs if r.kind == "conv"]
    assert len(convs) == 3
    assert convs[0].flops == 2 * 16 * 32 * 32 * 3 * 9  # stem: 2 x out x Cin x k x k
    assert sum(r.kind == "dwconv" for r in recs) == 2
    assert all(r.fused for r in recs if r.op in ("relu", "_native_batch_norm_legit_no_training"))
    rows = {r.layer for r in recs}
    assert {"stem", "blocks.0", "blocks.1", "head"} <= rows


def test_records_follow_the_batch(small):
    one, _ = op_records(small.program, small.layers, batch=1)
    four, _ = op_records(small.program, small.layers, batch=4)
    assert sum(r.flops for r in four) == pytest.approx(4 * sum(r.flops for r in one))


def test_uncalibrated_prediction_is_monotone_in_flops():
    times = [predict(lifted(w), "rpi5")["total_ms"] for w in (8, 32, 128)]
    assert times[0] < times[1] < times[2]


def test_prediction_output(small):
    out = predict(small, "jetson-orin-nano", batch=2)
    assert not out["calibrated"] and "uncalibrated" in out["basis"]
    assert out["batch"] == 2 and out["precision"] == "fp32"
    assert {r["layer"] for r in out["layers"]} >= {"stem", "blocks.0", "blocks.1", "head"}
    assert {r["bound"] for r in out["layers"]} <= {"compute", "memory", "overhead", "fused"}
    assert out["total_ms"] == pytest.approx(sum(r["ms"] for r in out["layers"])
                                            + out["host_link_ms"], rel=1e-6)


def test_coral_runs_int8_only(small):
    assert predict(small, "coral-edgetpu")["precision"] == "int8"
    with pytest.raises(LayerwiseError, match="not fp32"):
        predict(small, "coral-edgetpu", precision="fp32")


@pytest.mark.parametrize(("cache_mb", "l2_mb", "tier"), [
    (0.01, 0.001, "dram"),  # a cache so small that weights and larger activations stream
    (64.0, 0.001, "llc"),  # weights past L2, inside the last-level cache
    (64.0, 32.0, "hot"),
])
def test_vectorised_fit_matches_the_roofline(small, cache_mb, l2_mb, tier):
    """The calibration fits exactly the model that predict_records evaluates, for weights
    kept in L2, in the last-level cache and in DRAM."""
    recs, _ = op_records(small.program, small.layers, batch=1, nchwc_block=16)
    recs += op_records(normed().program, None, batch=1)[0]  # layer norms: the row term
    assert any(r.op == "reorder" for r in recs) and any(r.rows for r in recs)
    rng = np.random.default_rng(0)
    f = Factors()
    f = Factors({k: float(rng.uniform(0.05, 1)) for k in f.compute},
                {k: float(rng.uniform(0.05, 1)) for k in f.memory}, 3.0, 7.0, 0.5, 0.6, 4.0,
                0.7, 0.4)
    m = Machine({"fp32": 50.0}, 10.0, f, cache_bandwidth_gbs=40.0, cache_mb=cache_mb,
                threads=2, l2_mb=l2_mb)
    assert weight_tier(recs, m) == tier
    assert any(streams_dram(r, m, tier) for r in recs) is (tier == "dram")
    design = _Design([{"name": "small", "seconds": 1.0, "records": recs}], m)
    kinds = list(f.memory)
    ce = np.array([f.compute[k] for k in [*kinds, "fused", "epilogue", "row"]])
    me = np.array([f.memory[k] for k in kinds])
    scalars = (f.op_overhead_us * 1e-6, f.invoke_overhead_us * 1e-6, f.view_overhead_us * 1e-6,
               f.overlap, f.parallel_grain_us * 1e-6, f.llc_weight_eff, f.dram_weight_eff)
    got = design.predict(ce, me, scalars)[0]
    assert got * 1e3 == pytest.approx(predict_records(recs, m)["total_ms"], rel=1e-9)
    if tier == "llc":  # re-reading the weights from the LLC at 0.7 of its bandwidth costs
        hot = Machine({"fp32": 50.0}, 10.0, f, cache_bandwidth_gbs=40.0, cache_mb=cache_mb,
                      threads=2, l2_mb=64.0)
        assert predict_records(recs, m)["total_ms"] > predict_records(recs, hot)["total_ms"]


def test_small_ops_do_not_scale_to_all_threads():
    """With T threads an op far below the grain runs at one thread's speed (T times its
    all-threads roofline time), one far above at all threads' speed; one thread: no change."""
    assert parallel_slowdown(1e-9, 2, 1e-5) == pytest.approx(2.0, rel=1e-3)
    assert parallel_slowdown(1.0, 2, 1e-5) == pytest.approx(1.0, rel=1e-4)
    assert parallel_slowdown(1e-5, 4, 1e-5) == pytest.approx(4 / 2.5)
    assert parallel_slowdown(1e-9, 1, 1e-5) == 1.0 and parallel_slowdown(1e-9, 2, 0.0) == 1.0
    lin = next(r for r in op_records(lifted().program, None, batch=1)[0] if r.kind == "matmul")
    one = predict_records([lin], Machine({"fp32": 50.0}, 10.0, Factors(op_overhead_us=0)))
    two = predict_records([lin], Machine({"fp32": 50.0}, 10.0, Factors(
        op_overhead_us=0, parallel_grain_us=1e3), threads=2))
    assert 1.9 < two["total_ms"] / one["total_ms"] <= 2.0


def test_gelu_is_a_kernel_of_its_own_and_costs_more_than_relu():
    """onnxruntime fuses ReLU into the preceding matmul but runs GELU as its own kernel, at
    several sigmoid's worth of arithmetic per element; a reshape costs a launch, no data."""
    def records(act):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), act(), nn.Unflatten(1, (4, 8)))
        ir = lift(Source("test:mlp", model.eval(), {"input": torch.randn(2, 8)}, "tabular"))
        return {r.op: r for r in op_records(ir.program, ir.layers, batch=1)[0]}

    relu, gelu = records(nn.ReLU)["relu"], records(nn.GELU)
    assert relu.fused and not gelu["gelu"].fused
    assert gelu["gelu"].flops == 20 * relu.flops
    view = gelu["view"]
    assert view.kind == "view" and view.flops == view.bytes == 0
    m = Machine({"fp32": 50.0}, 10.0, Factors(view_overhead_us=0.4))
    assert predict_records([view], m)["total_ms"] == pytest.approx(0.4e-3)


@pytest.fixture(scope="module")
def host_calibration(tmp_path_factory):
    """A quick host calibration on a subset of the calibration set, in a throw-away home."""
    import os

    home = tmp_path_factory.mktemp("lw-home")
    old = os.environ.get("LAYERWISE_HOME")
    os.environ["LAYERWISE_HOME"] = str(home)
    keep = {"gemm-peak", "stream-add", "stream-add-cache", "conv3x3-32x56", "conv3x3-64x56",
            "dwconv-192x28s1", "add-64x56", "linear-64x256x256", "avgpool-512x7"}
    cal = calibrate_host(cases=[c for c in calibration_cases() if c.name in keep], rounds=2)
    yield cal
    if old is None:
        os.environ.pop("LAYERWISE_HOME")
    else:
        os.environ["LAYERWISE_HOME"] = old


def test_host_calibration_is_stored_and_reused(host_calibration):
    assert not host_calibration["reused"]
    assert host_calibration["peak_gops"]["fp32"] > 0 and host_calibration["bandwidth_gbs"] > 0
    stored = load_calibration()
    assert stored is not None and stored["factors"] == host_calibration["factors"]
    assert calibrate_host()["reused"]


def test_host_prediction_uses_the_calibration(host_calibration):
    """Structure only: how close the prediction comes to measured latency is timing, which
    belongs in bench/predict.py (a shared CPU makes any bound here flaky)."""
    spec = "tests/fixtures/models.py:residual_mlp"
    pred = api.predict(spec, "host")
    assert pred["calibrated"] and "calibrated on this machine" in pred["basis"]
    assert pred["total_ms"] > 0 and {row["layer"] for row in pred["layers"]} >= {"blocks.0"}
    assert 0 < sum(row["share"] for row in pred["layers"]) <= 1 + 1e-9  # + per-call overhead


def test_a_calibration_set_needs_the_peak_cases(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERWISE_HOME", str(tmp_path))
    with pytest.raises(LayerwiseError, match="gemm-peak"):
        add = next(c for c in calibration_cases() if c.name == "add-32x384")
        calibrate_host(cases=[Case("only", add.build)], rounds=1)


def test_op_limits_are_reported(small):
    assert predict(small, "coral-edgetpu")["unsupported_ops"] == []  # a CNN maps fully
    attn = lift(Source("test:attention", nn.MultiheadAttention(16, 2, batch_first=True).eval(),
                       {"query": torch.randn(2, 8, 16), "key": torch.randn(2, 8, 16),
                        "value": torch.randn(2, 8, 16)}, "sequence"))
    out = predict(attn, "coral-edgetpu")
    assert "BATCH_MATMUL" in out["unsupported_ops"] and "cannot map" in out["notes"][0]
    assert predict(attn, "rpi5")["unsupported_ops"] == []  # no limits declared
