"""TFLite converters added for the coverage matrix (bench/coverage.py): run-time gathers, and
the emit-time load check that keeps LiteRT from ever meeting an op it cannot register."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from layerwise.base.errors import TargetError
from layerwise.compiler.frontend import lift
from layerwise.runtime import compare, open_runner
from layerwise.sources import Source
from layerwise.targets.tflite import check_loads, emit_tflite


class TokenTypes(nn.Module):
    """RoBERTa's token types: a buffer gathered at run-time positions (torch.gather)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("types", torch.arange(16).view(1, 16) % 3)
        self.emb = nn.Embedding(3, 4)

    def forward(self, ids, x):
        pos = torch.cumsum(ids.ne(1).int(), dim=1) * ids.ne(1).int() + 1
        types = torch.gather(self.types.expand(ids.shape[0], -1), 1, pos.long())
        picked = torch.gather(x, 2, (ids % 4).unsqueeze(-1).expand(-1, -1, 2))
        return self.emb(types), picked


def test_gather_with_run_time_indices_is_gather_nd(tmp_path):
    ids = torch.tensor([[0, 5, 6, 1, 1], [0, 7, 8, 9, 1]])
    ir = lift(Source("types", TokenTypes().eval(), {"ids": ids, "x": torch.randn(2, 5, 6)},
                     "tabular"))
    path = tmp_path / "m.tflite"
    stats = emit_tflite(ir, path)
    assert stats["ops"]["GATHER_ND"] == 2, stats
    out = open_runner("tflite", path, threads=1).run({k: v.numpy() for k, v in
                                                     ir.example_inputs.items()})
    for got, want in zip(out, ir.run()):
        np.testing.assert_array_equal(got, want.numpy())
    assert compare(out, [t.numpy() for t in ir.run()], 1e-6)["passed"]


def test_an_op_version_litert_does_not_register_fails_at_emit(tmp_path):
    from ai_edge_litert import schema_py_generated as fb

    ir = lift(Source("lin", nn.Linear(4, 3).eval(), {"input": torch.randn(2, 4)}, "tabular"))
    path = tmp_path / "m.tflite"
    emit_tflite(ir, path)
    check_loads(path)  # what emit writes loads
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(path.read_bytes(), 0))
    model.operatorCodes[0].version = 99  # no LiteRT registers this version
    import flatbuffers

    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), b"TFL3")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(b.Output()))
    with pytest.raises(TargetError, match="LiteRT cannot load the emitted model"):
        check_loads(bad)


class Pooled(nn.Module):
    """torchvision ConvNeXt's pooled features: an as_strided that only reshapes."""

    def forward(self, x):
        p = x.mean((2, 3), keepdim=True)
        return p.as_strided(p.shape, (p.shape[1], 1, p.shape[1], p.shape[1])) * 2


class Windows(nn.Module):
    """Overlapping windows: an as_strided no reshape can express."""

    def forward(self, x):
        return x.as_strided((2, 3, 2), (6, 1, 1)) + 1


def test_as_strided_that_reshapes_is_a_reshape(tmp_path):
    ir = lift(Source("pooled", Pooled().eval(), {"x": torch.randn(2, 6, 4, 4)}, "vision"))
    assert any("as_strided" in str(n.target) for n in ir.program.graph.nodes)
    path = tmp_path / "m.tflite"
    emit_tflite(ir, path)
    out = open_runner("tflite", path, threads=1).run({"x": ir.example_inputs["x"].numpy()})
    np.testing.assert_allclose(out[0], ir.run()[0].numpy(), rtol=1e-6, atol=1e-6)
    ir = lift(Source("windows", Windows().eval(), {"x": torch.randn(2, 6)}, "tabular"))
    with pytest.raises(TargetError, match="only an as_strided that reshapes"):
        emit_tflite(ir, tmp_path / "w.tflite")


class RelativeBias(nn.Module):
    """Swin's relative position bias (a table indexed by a buffer) and a run-time index_select."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(9, 2))
        self.register_buffer("index", torch.tensor([0, 4, 8, 2, 6, 1]))

    def forward(self, x, ids):
        bias = self.table.index_select(0, self.index).t()  # [2, 6]
        return x.index_select(3, ids) + bias[:, None, :ids.shape[0]]


def test_index_select_is_gather(tmp_path):
    ir = lift(Source("bias", RelativeBias().eval(), {"x": torch.randn(2, 2, 3, 5),
                                                    "ids": torch.tensor([4, 0, 2, 2, 1])},
                     "tabular"))
    path = tmp_path / "m.tflite"
    emit_tflite(ir, path)
    feeds = {k: v.numpy() for k, v in ir.example_inputs.items()}
    out = open_runner("tflite", path, threads=1).run(feeds)
    np.testing.assert_allclose(out[0], ir.run()[0].numpy(), rtol=1e-6, atol=1e-6)


class Video(nn.Module):
    """A video ResNet's pieces: strided 3-d conv + BN + ReLU, a (2+1)-d pair, pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 4, (3, 5, 5), (1, 2, 2), (1, 2, 2), bias=False),
                                  nn.BatchNorm3d(4), nn.ReLU())
        self.spatial = nn.Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1))
        self.temporal = nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0), dilation=(1, 1, 1))

    def forward(self, x):
        x = self.stem(x)
        return (x + self.temporal(torch.relu(self.spatial(x)))).mean((2, 3, 4))


def test_3d_convolution_is_conv_3d(tmp_path):
    torch.manual_seed(0)
    model = Video().eval()
    model.stem[1].running_mean.uniform_(-0.5, 0.5)
    model.stem[1].running_var.uniform_(0.5, 2.0)
    ir = lift(Source("video", model, {"x": torch.randn(2, 3, 4, 10, 10)}, "video"))
    stats = emit_tflite(ir, tmp_path / "m.tflite")
    assert stats["ops"]["CONV_3D"] == 3 and "BATCH_NORM" not in str(stats["ops"]), stats
    out = open_runner("tflite", tmp_path / "m.tflite", threads=1).run(
        {"x": ir.example_inputs["x"].numpy()})
    np.testing.assert_allclose(out[0], ir.run()[0].numpy(), rtol=1e-4, atol=1e-5)


class SliceWrite(nn.Module):
    """GhostNet-style: features written into a slice of a larger tensor."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 6, x.shape[2], x.shape[3])
        out[:, 1:4] = torch.relu(x)
        out[:, 4:] = x[:, :2] * 2
        return out


def test_slice_scatter_is_concatenation(tmp_path):
    from layerwise.compiler.passes import run_passes
    from layerwise.targets.tflite import INFO

    ir = lift(Source("write", SliceWrite().eval(), {"x": torch.randn(2, 3, 4, 4)}, "vision"))
    assert any("slice_scatter" in str(n.target) for n in ir.program.graph.nodes)
    ir = run_passes(ir, list(INFO.legalize))  # copies into slices become adds
    stats = emit_tflite(ir, tmp_path / "m.tflite")
    assert "CONCATENATION" in stats["ops"], stats
    out = open_runner("tflite", tmp_path / "m.tflite", threads=1).run(
        {"x": ir.example_inputs["x"].numpy()})
    np.testing.assert_array_equal(out[0], ir.run()[0].numpy())


@pytest.mark.parametrize("slope", [0.01, 0.1])
def test_leaky_relu(tmp_path, slope):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(slope)).eval()
    ir = lift(Source("leaky", model, {"input": torch.randn(2, 3, 6, 6)}, "vision"))
    stats = emit_tflite(ir, tmp_path / "m.tflite")
    assert stats["ops"]["LEAKY_RELU"] == 1, stats
    out = open_runner("tflite", tmp_path / "m.tflite", threads=1).run(
        {"input": ir.example_inputs["input"].numpy()})
    np.testing.assert_allclose(out[0], ir.run()[0].numpy(), rtol=1e-5, atol=1e-6)


class Resize(nn.Module):
    """GhostNetV2's attention branch: nearest resizing back to a size that is no multiple."""

    def forward(self, x):
        small = nn.functional.avg_pool2d(x, 2)  # 7 -> 3
        return x * nn.functional.interpolate(small, size=x.shape[-2:], mode="nearest")


def test_nearest_resize_by_a_non_integer_factor(tmp_path):
    ir = lift(Source("resize", Resize().eval(), {"x": torch.randn(2, 3, 7, 7)}, "vision"))
    stats = emit_tflite(ir, tmp_path / "m.tflite")
    assert stats["ops"].get("GATHER") == 2, stats
    out = open_runner("tflite", tmp_path / "m.tflite", threads=1).run(
        {"x": ir.example_inputs["x"].numpy()})
    np.testing.assert_allclose(out[0], ir.run()[0].numpy(), rtol=1e-6, atol=1e-6)


class ViewAndOutput(nn.Module):
    """A conv's output (laid out NHWC in the .tflite) is a model output, and a transposed
    view of it is flattened first (SigLIP's pooling head reads its encoder output so)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        a = self.conv(x)
        return a, a.transpose(2, 3).reshape(x.shape[0], -1) * 2


def test_a_transposed_view_and_its_source_keep_their_own_layouts(tmp_path):
    torch.manual_seed(0)
    ir = lift(Source("view", ViewAndOutput().eval(), {"x": torch.randn(1, 3, 5, 7)}, "image"))
    emit_tflite(ir, tmp_path / "m.tflite")
    out = open_runner("tflite", tmp_path / "m.tflite", threads=1).run(
        {"x": ir.example_inputs["x"].numpy()})
    for got, want in zip(out, ir.run(), strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


class GroupedVideo(nn.Module):
    """MViT's pooling (a depthwise 3-d conv, strided in space) and a 2-group 3-d conv."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.Conv3d(4, 4, 3, (1, 2, 2), 1, groups=4, bias=False)
        self.grouped = nn.Conv3d(4, 6, (3, 1, 1), padding=(1, 0, 0), dilation=(1, 1, 1),
                                 groups=2)

    def forward(self, x):
        return torch.relu(self.grouped(self.pool(x)))


def test_grouped_3d_convolutions(tmp_path):
    torch.manual_seed(0)
    ir = lift(Source("gvideo", GroupedVideo().eval(), {"x": torch.randn(2, 4, 5, 8, 6)},
                     "video"))
    stats = emit_tflite(ir, tmp_path / "m.tflite")
    assert stats["ops"]["DEPTHWISE_CONV_2D"] == 3 and stats["ops"]["CONV_3D"] == 2, stats
    out = open_runner("tflite", tmp_path / "m.tflite", threads=1).run(
        {"x": ir.example_inputs["x"].numpy()})
    np.testing.assert_allclose(out[0], ir.run()[0].numpy(), rtol=1e-4, atol=1e-5)


class Pool3d(nn.Module):
    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv3d(3, 4, 1), pool

    def forward(self, x):
        return self.pool(self.conv(x))


@pytest.mark.parametrize("pool", [
    nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),  # S3D's stem
    nn.MaxPool3d(3, 1, 1),
    nn.MaxPool3d(2, 2, ceil_mode=True),
    nn.AvgPool3d((2, 7, 7), 1),  # S3D's head
    nn.AvgPool3d(3, 2, 1)])
def test_3d_pooling_is_two_2d_poolings(tmp_path, pool):
    ir = lift(Source("pool3d", Pool3d(pool).eval(),
                     {"x": torch.randn(2, 3, 5, 9, 7)}, "video"))
    stats = emit_tflite(ir, tmp_path / "m.tflite")
    op = "MAX_POOL_2D" if isinstance(pool, nn.MaxPool3d) else "AVERAGE_POOL_2D"
    k = pool.kernel_size
    assert stats["ops"][op] == 1 + ((k if isinstance(k, int) else k[0]) > 1), stats
    out = open_runner("tflite", tmp_path / "m.tflite", threads=1).run(
        {"x": ir.example_inputs["x"].numpy()})
    np.testing.assert_allclose(out[0], ir.run()[0].numpy(), rtol=1e-5, atol=1e-5)
