"""Full-integer int8 transformers in the tflite target (a device with no float fallback, as
Coral): layer norms as LiteRT's int8 MEAN, SUB, L2_NORMALIZATION, MUL and ADD; attention masks
clamped into the int8 range of the scores; a 0/1 mask cast to int8; attention, softmax and
GELU in int8 kernels. What int8 still cannot run is an error naming the op and the layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")

from layerwise.base.errors import TargetError
from layerwise.compiler.frontend import lift
from layerwise.runtime import open_runner
from layerwise.sources import Source
from layerwise.targets.tflite import calibrate_ranges, emit_tflite
from tests.conftest import FIXTURES
from tests.fixtures.models import TinyAttention
from tests.targets.test_tflite import (
    TinyBert,
    _cosines,
    _op_inputs,
    _op_types,
    _token_batch,
    assert_padding_hidden,
    token_cosines,
)


@pytest.fixture(scope="module")
def full_bert(tmp_path_factory):
    """The tiny BERT with Coral's recipe (full integer), emitted in fp32 and int8."""
    from layerwise.compiler.passes.quantize import quantize
    from layerwise.targets import quant_recipe

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ir = lift(Source("tiny-bert", TinyBert().eval(), _token_batch(gen, 2), "text"))
    ranges = calibrate_ranges(ir, [_token_batch(gen, 4) for _ in range(4)],
                              method="mean_minmax")
    quantize(ir, quant_recipe("coral-edgetpu"))
    tmp = tmp_path_factory.mktemp("full_bert")
    emit_tflite(ir, tmp / "f.tflite")
    stats = emit_tflite(ir, tmp / "q.tflite", precision="int8", ranges=ranges)
    return tmp, stats


def test_full_integer_bert_runs_every_op_in_int8(full_bert):
    tmp, stats = full_bert
    floats = [op for op, types in _op_inputs(tmp / "q.tflite") if "FLOAT32" in types]
    assert floats == []  # int8 from the embeddings to the output's one DEQUANTIZE
    assert stats["ops"]["DEQUANTIZE"] == 1 and "QUANTIZE" not in stats["ops"]
    # five layer norms (embeddings, two per layer), each normalized by L2_NORMALIZATION
    assert stats["ops"]["L2_NORMALIZATION"] == 5 and "RSQRT" not in stats["ops"]
    assert _op_types(tmp / "q.tflite")["SELECT_V2"] == {"BOOL"}  # the mask, from int8 consts
    cos = token_cosines(tmp / "f.tflite", tmp / "q.tflite")
    print(f"\nfull-integer tiny BERT vs fp32 per-token cosine: mean {cos.mean():.4f} "
          f"min {cos.min():.4f}")
    assert cos.mean() >= 0.99 and cos.min() >= 0.95


def test_full_integer_mask_hides_padding(full_bert):
    """finfo.min clamped to the bottom of the masked scores' int8 range: the int8 softmax
    weighs padded positions 0, so what they hold leaves the real tokens' outputs unchanged."""
    tmp, _ = full_bert
    assert_padding_hidden(tmp / "q.tflite")


class Norms(nn.Module):
    """Patch embedding (a conv, its tokens channels-last), a layer norm over the channels and
    one over the last two axes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 4, stride=4)
        self.ln, self.ln2 = nn.LayerNorm(16), nn.LayerNorm([16, 16])
        with torch.no_grad():
            for ln in (self.ln, self.ln2):
                ln.weight.uniform_(0.5, 1.5)
                ln.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)
        return self.ln2(self.ln(t))


def test_int8_layer_norm_over_last_axes(tmp_path):
    torch.manual_seed(0)
    ir = lift(Source("norms", Norms().eval(), {"x": torch.randn(2, 3, 16, 16)}, "vision"))
    ranges = calibrate_ranges(ir, [{"x": torch.randn(4, 3, 16, 16)} for _ in range(4)])
    steps = {k for k in ranges if k.startswith("native_layer_norm.")}
    assert steps == {f"native_layer_norm.{s}" for s in ("mean", "centered", "norm", "scaled")}
    assert "getitem" in ranges  # the output's range: its getitem's, not recorded twice
    path = tmp_path / "q.tflite"
    stats = emit_tflite(ir, path, precision="int8", ranges=ranges, full_integer=True)
    assert stats["ops"]["L2_NORMALIZATION"] == 2
    x = torch.randn(2, 3, 16, 16)
    out = open_runner("tflite", path).run({"x": x.numpy()})[0]
    with torch.no_grad():
        ref = ir.module()(x=x).numpy()
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    print(f"\nint8 layer norms vs fp32: relative error {err:.4f}")
    # L2_NORMALIZATION's int8 output has a fixed scale of 1/128: over C values its noise is
    # about sqrt(C) / 443 of the signal (3.6% for the second norm's 256)
    assert err <= 0.07


class Sine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.sin(self.fc(x))


def test_full_integer_refuses_an_op_without_int8_kernel(tmp_path):
    ir = lift(Source("sine", Sine().eval(), {"x": torch.randn(2, 8)}, "sequence"))
    ranges = calibrate_ranges(ir, [{"x": torch.randn(4, 8)}])
    with pytest.raises(TargetError, match=r"aten\.sin.*layer \(top level\).*full-integer"):
        emit_tflite(ir, tmp_path / "q.tflite", precision="int8", ranges=ranges,
                    full_integer=True)
    assert not (tmp_path / "q.tflite").exists()


def test_full_integer_attention_int8_kernels(tmp_path):
    """Full integer: BATCH_MATMUL, SOFTMAX and GELU run LiteRT's int8 kernels (the GELU-fed
    linear too), and the result stays close to fp32."""
    torch.manual_seed(0)
    ir = lift(Source("tiny-attention", TinyAttention().eval(), {"x": torch.randn(2, 8, 16)},
                     "sequence"))
    ranges = calibrate_ranges(ir, [{"x": torch.randn(4, 8, 16)} for _ in range(4)],
                              method="mean_minmax")
    path = tmp_path / "q.tflite"
    emit_tflite(ir, path, precision="int8", ranges=ranges, full_integer=True)
    types = _op_types(path)
    for op in ("BATCH_MATMUL", "SOFTMAX", "GELU", "FULLY_CONNECTED", "ADD"):
        assert types[op] == {"INT8"}, (op, types[op])
    x = torch.randn(2, 8, 16)
    out = open_runner("tflite", path).run({"x": x.numpy()})[0]
    with torch.no_grad():
        ref = ir.module()(x=x).numpy()
    cos = _cosines(out, ref)
    assert cos.mean() >= 0.98, cos


def test_compile_for_coral_names_the_ops_outside_its_limits(tmp_path):
    """The Edge TPU compiler leaves ops outside its list (and what follows them) to the host
    CPU: the manifest names them, before anyone runs edgetpu_compiler."""
    from layerwise import api

    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((16, 8, 16), np.float32))
    m = api.compile(f"{FIXTURES}:tiny_attention", api.CompileOptions(
        device="coral-edgetpu", precision="int8", data=str(data), out=str(tmp_path / "b"),
        db="none"))
    d = m["device_ops"]
    assert d["device"] == "coral-edgetpu" and d["outside_op_limits"] == ["BATCH_MATMUL", "GELU"]
    assert d["counts"] == {"BATCH_MATMUL": 2, "GELU": 1}
    assert m["model"]["ops"]["FULLY_CONNECTED"] == 4  # within the limits: not listed
