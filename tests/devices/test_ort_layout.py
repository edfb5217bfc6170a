"""The op records follow what onnxruntime's CPU optimizer does with a graph: its NCHWc layout
reorders (checked against the optimized model onnxruntime itself writes), the padding of a
blocked conv's channels, and the fusions the roofline counts (SiLU's QuickGelu, a folded
batch norm, a squeeze-excite scale that is not fused, a Gemm's residual add)."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layerwise.devices.latency.calibrate import export_onnx, exported, nchwc_block
from layerwise.devices.latency.graph_ops import op_records

BLOCK = nchwc_block()


class Between(nn.Module):
    """conv -> f -> conv on 32 channels (or a squeeze-excite scale when se)."""

    def __init__(self, f, cin: int = 32, se: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(cin, 32, 1), nn.Conv2d(32, 32, 1)
        self.f, self.se = f, se

    def forward(self, x):
        h = self.a(x)
        if self.se:
            h = h * torch.sigmoid(h.mean((2, 3), keepdim=True))
        return self.b(self.f(h))


class Residual(nn.Module):
    """x + conv(conv(x)) on the graph's (NCHW) input, or after a stem conv (NCHWc)."""

    def __init__(self, stem: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1) if stem else nn.Identity()
        self.a, self.b = nn.Conv2d(32, 32, 1), nn.Conv2d(32, 32, 1)

    def forward(self, x):
        x = self.stem(x)
        return x + self.b(torch.relu(self.a(x)))


CASES = {
    "residual-on-input": (lambda: Residual(stem=False), 32),
    "residual-after-stem": (lambda: Residual(stem=True), 3),
    "relu": (lambda: Between(torch.relu), 32),
    "gelu": (lambda: Between(F.gelu), 32),
    "silu": (lambda: Between(F.silu), 32),
    "hardswish": (lambda: Between(F.hardswish), 32),
    "squeeze-excite": (lambda: Between(torch.relu, se=True), 32),
    "stem": (lambda: Between(torch.relu, cin=3), 3),
    "exp": (lambda: Between(torch.exp), 32),
}


def _ort_nodes(program, tmp_path) -> tuple[int, int]:
    """Reorder and Add nodes in the model onnxruntime optimizes from the exporter's ONNX
    (the exporter that the calibration and the onnx target use)."""
    path, opt = tmp_path / "m.onnx", tmp_path / "opt.onnx"
    export_onnx(program, path)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(opt)
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(opt)).graph.node
    return (sum(n.op_type in ("ReorderInput", "ReorderOutput") for n in nodes),
            sum(n.op_type == "Add" for n in nodes))


@pytest.mark.skipif(BLOCK == 0, reason="this CPU has no NCHWc kernels in onnxruntime")
@pytest.mark.parametrize("case", sorted(CASES))
def test_reorders_and_adds_match_onnxruntime(case, tmp_path):
    build, cin = CASES[case]
    torch.manual_seed(0)
    x = torch.randn(1, cin, 8, 8)
    with torch.no_grad():
        program = exported(build().eval(), (x,))
    records, _ = op_records(program, None, batch=1, nchwc_block=BLOCK)
    ours = (sum(r.op == "reorder" for r in records),
            sum(r.op == "add" and not r.fused for r in records))
    assert ours == _ort_nodes(program, tmp_path)
    assert not any(r.op == "reorder" for r in op_records(program, None, batch=1)[0])


def test_a_blocked_conv_computes_whole_blocks():
    """24 output channels compute as 32 with a block of 16; 32 stay 32."""
    def conv_flops(cout: int, block: int) -> float:
        x = torch.randn(1, 32, 8, 8)
        with torch.no_grad():
            program = exported(nn.Conv2d(32, cout, 1, bias=False).eval(), (x,))
        records, _ = op_records(program, None, batch=1, nchwc_block=block)
        return next(r.flops for r in records if r.op == "convolution")

    assert conv_flops(24, 16) == pytest.approx(conv_flops(24, 0) * 32 / 24)
    assert conv_flops(32, 16) == pytest.approx(conv_flops(32, 0))


def _records(module, *shape):
    torch.manual_seed(0)
    with torch.no_grad():
        program = exported(module.eval(), (torch.randn(*shape),))
    return op_records(program, None, batch=1)[0]


def test_fusions_follow_onnxruntime():
    silu = _records(Between(F.silu), 1, 32, 8, 8)
    assert [r.fused for r in silu if r.op == "mul"] == [True]  # x * sigmoid(x): QuickGelu
    se = _records(Between(torch.relu, se=True), 1, 32, 8, 8)
    assert [r.fused for r in se if r.op == "mul"] == [False]  # a broadcast scale: its own Mul
    bn = _records(nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)), 1, 8, 8, 8)
    assert [(r.fused, r.flops) for r in bn if "batch_norm" in r.op] == [(True, 0.0)]

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return x + self.fc(x)

    res = _records(Residual(), 1, 16)
    assert [r.fused for r in res if r.op == "add"] == [False]  # a separate Add after a Gemm


def test_layer_norm_counts_its_rows():
    records = _records(nn.LayerNorm(32), 1, 100, 32)
    assert [r.rows for r in records if r.kind == "norm"] == [100.0]
    conv = _records(nn.Conv2d(4, 6, 1), 1, 4, 5, 5)
    assert [r.outputs for r in conv if r.op == "convolution"] == [150.0]
