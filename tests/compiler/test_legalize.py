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


def _verifies_on_tvm(name: str, ir, tmp_path) -> None:
    """compile's build step for the tvm target (its legalizations, emit, verification)."""
    from layerwise.finish import Choice, build
    from layerwise.options import CompileOptions, check_compile

    opts = check_compile(CompileOptions(target="tvm", out=str(tmp_path / "b"), db="none"))
    man = build(name, ir, opts, Choice(), [], out=tmp_path / "b", force=False,
                progress=lambda _m: None, timings={}, record=False)
    assert man["verification"]["passed"]


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


class GroupNormHead(torch.nn.Module):
    """FCOS / RetinaNet-v2 heads: conv, GroupNorm, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, 8)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


def test_group_norm_decomposes_and_tflite_runs_it(tmp_path):
    from layerwise.runtime import open_runner
    from layerwise.sources import Source
    from layerwise.targets.tflite import emit_tflite

    torch.manual_seed(0)
    ir = lift(Source("gn", GroupNormHead().eval(), {"x": torch.randn(2, 3, 6, 6)}, "vision"))
    assert _count(ir, aten.native_group_norm.default) == 1
    ref = ir.run()
    ir = get_pass("decompose_group_norm")(ir)
    assert _count(ir, aten.native_group_norm.default) == 0
    torch.testing.assert_close(ir.run()[0], ref[0], rtol=1e-5, atol=1e-5)
    emit_tflite(ir, tmp_path / "m.tflite")
    out = open_runner("tflite", tmp_path / "m.tflite", threads=1).run(
        {"x": ir.example_inputs["x"].numpy()})
    torch.testing.assert_close(torch.from_numpy(out[0]), ref[0], rtol=1e-5, atol=1e-5)


class FloorDivide(torch.nn.Module):
    """EdgeNeXt's and DETR's position encodings: a float tensor floor-divided by an int."""

    def forward(self, x):
        return torch.div(x, 2, rounding_mode="floor") + torch.floor_divide(x * 3, 0.7)


class HalvesScattered(torch.nn.Module):
    """GhostNet's write of channel halves: slices of a buffer replaced by computed parts."""

    def forward(self, x):
        out = torch.cat([x, x], 1)
        out[:, 2:4] = x[:, :2] * 2
        out[:] = out + 1  # a scatter over the whole (dynamic) batch axis
        return out


def test_float_floor_divide_becomes_floor_of_a_division():
    from layerwise.sources import Source

    ir = lift(Source("fd", FloorDivide().eval(), {"x": torch.randn(2, 8) * 10}, "tabular"))
    ref = ir.run()
    ir = get_pass("legalize_float_floor_divide")(ir)
    assert _count(ir, aten.floor_divide.default) == 0
    assert _count(ir, aten.div.Tensor_mode) == 0 and _count(ir, aten.floor.default) == 2
    for a, b in zip(ir.run(), ref):
        torch.testing.assert_close(a, b)


def test_slice_scatters_become_concatenations_and_tvm_builds(tmp_path):
    from layerwise.sources import Source

    ir = lift(Source("gh", HalvesScattered().eval(), {"x": torch.randn(2, 4, 3)}, "tabular"))
    assert _count(ir, aten.slice_scatter.default) >= 2
    ref = ir.run()
    ir = get_pass("legalize_slice_scatter")(ir)
    assert _count(ir, aten.slice_scatter.default) == 0
    for a, b in zip(ir.run(), ref):
        torch.testing.assert_close(a, b)
    source = Source("gh", HalvesScattered().eval(), {"x": torch.randn(2, 4, 3)}, "tabular")
    _verifies_on_tvm("gh", lift(source), tmp_path)


class RepeatByBatch(torch.nn.Module):
    """WavLM's position bias: a shared tensor repeated once per row of a dynamic batch."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(3, 5, 5))

    def forward(self, x):
        rep = self.bias.unsqueeze(0).repeat(x.shape[0], 1, 1, 1)
        return x + rep.view(x.shape[0] * 3, 5, 5).sum(0)


def test_repeats_by_the_batch_become_expands_and_tvm_builds(tmp_path):
    from layerwise.sources import Source

    ir = lift(Source("rep", RepeatByBatch().eval(), {"x": torch.randn(2, 5, 5)}, "tabular"))
    assert _count(ir, aten.repeat.default) == 1
    ref = ir.run()
    ir = get_pass("legalize_symbolic_repeat")(ir)
    assert _count(ir, aten.repeat.default) == 0 and _count(ir, aten.expand.default) >= 1
    for a, b in zip(ir.run(), ref):
        torch.testing.assert_close(a, b)
    source = Source("rep", RepeatByBatch().eval(), {"x": torch.randn(2, 5, 5)}, "tabular")
    _verifies_on_tvm("rep", lift(source), tmp_path)


class LastOfEach(torch.nn.Module):
    """x[:, -1] on a static axis and x[-1] on the dynamic batch axis."""

    def forward(self, x):
        return x[:, -1] * 2, x[-1] + 1


def test_negative_selects_count_from_the_start_and_tvm_verifies(tmp_path):
    from layerwise.sources import Source

    def source():
        return Source("last", LastOfEach().eval(), {"x": torch.randn(3, 4, 5)}, "tabular")

    ir = lift(source())
    ref = ir.run()
    ir = get_pass("legalize_negative_select")(ir)
    selects = [n.args[2] for n in ir.program.graph.nodes if n.target is aten.select.int]
    assert all(i >= 0 for i in selects)
    assert ir.annotations["passes"][-1] == {"name": "legalize_negative_select", "rewritten": 2}
    for a, b in zip(ir.run(), ref):
        torch.testing.assert_close(a, b)
    _verifies_on_tvm("last", lift(source()), tmp_path)


class CrossAttention(torch.nn.Module):
    """nn.MultiheadAttention whose key is not its query (SigLIP's pooling head, ViT's encoder
    as torchvision exports it): the key/value projection is a bmm by an expanded weight."""

    def __init__(self):
        super().__init__()
        self.probe = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(self.probe.repeat(x.shape[0], 1, 1), x, x)[0]


def test_bmm_by_an_expanded_weight_becomes_a_matmul_and_tvm_verifies(tmp_path):
    from layerwise.sources import Source

    def source():
        torch.manual_seed(0)
        return Source("xattn", CrossAttention().eval(), {"x": torch.randn(2, 5, 8)}, "tabular")

    ir = lift(source())
    assert _count(ir, aten.bmm.default) == 3  # the kv projection, scores, weighted values
    expands = _count(ir, aten.expand.default)
    ref = ir.run()
    ir = get_pass("legalize_shared_weight_bmm")(ir)
    assert _count(ir, aten.bmm.default) == 2 and _count(ir, aten.matmul.default) == 1
    assert _count(ir, aten.expand.default) == expands - 1  # the weight's, gone with its bmm
    for a, b in zip(ir.run(), ref):
        torch.testing.assert_close(a, b)
    _verifies_on_tvm("xattn", lift(source()), tmp_path)
