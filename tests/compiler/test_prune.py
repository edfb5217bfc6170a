"""prune: dependency groups across residual adds, depthwise / grouped convs, concatenation,
layer norms and attention heads; planted dead channels are exactly the ones removed and the
output does not move; the weights really shrink and the result exports to ONNX."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from layerwise.compiler.frontend import lift
from layerwise.compiler.passes import get_pass
from layerwise.compiler.passes.prune import PruneError, dependency_groups, prune
from layerwise.sources import Source, load_source
from tests.fixtures.models import ResidualMLP

ODD = list(range(1, 16, 2))


def _ir(model: nn.Module, **inputs):
    return lift(Source("test", model.eval(), inputs, "vision"))


def _state(ir) -> dict[str, torch.Tensor]:
    return ir.program.state_dict


def _kept(out, producer: str) -> list[int]:
    groups = out.annotations["passes"][-1]["groups"]
    return next(g["kept"] for g in groups if producer in g["producers"])


def _check(out):
    out.program.graph_module.graph.lint()
    assert out.annotations["passes"][-1]["name"] == "prune"


# ------------------------------------------------------------ (a) planted CNN


class ResCNN(nn.Module):
    """conv-bn-relu-conv with a residual add, then a 1x1 conv and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.proj = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        h = h + self.c2(torch.relu(self.bn1(self.c1(h))))
        return self.head(torch.relu(self.proj(h)).mean((2, 3)))


def _planted_cnn() -> ResCNN:
    """Every even channel of every group is dead: its producer rows, norm scale and shift and
    consumer columns are zero, so removing it leaves the output exactly as it is."""
    torch.manual_seed(0)
    m = ResCNN().eval()
    z = torch.arange(0, 16, 2)
    with torch.no_grad():
        m.proj.bias.fill_(1.0)  # live channels stay active after the ReLUs
        for bn in (m.bn0, m.bn1):
            bn.bias.fill_(1.0)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight[z] = 0
            bn.bias[z] = 0
        for conv in (m.stem, m.c1, m.c2, m.proj):
            conv.weight[z] = 0
            conv.bias[z] = 0
        for conv in (m.c1, m.c2, m.proj):
            conv.weight[:, z] = 0
        m.head.weight[:, z] = 0
    return m


@pytest.mark.parametrize("criterion", ["l2", "activation", "taylor"])
def test_planted_cnn_removes_exactly_the_dead_channels(criterion):
    ir = _ir(_planted_cnn(), x=torch.randn(2, 3, 8, 8))
    out = prune(ir, 0.5, criterion)
    _check(out)
    # Before: three groups of 16 (stem + c2 joined by the add, c1, proj); the head's outputs
    # reach the model output and stay. Expected: each keeps exactly the odd channels.
    groups = out.annotations["passes"][-1]["groups"]
    assert sorted(g["producers"] for g in groups) == [["c1"], ["proj"], ["stem", "c2"]]
    assert all(g["kept"] == ODD for g in groups)
    sd = _state(out)
    assert sd["stem.weight"].shape == (8, 3, 3, 3) and sd["c1.weight"].shape == (8, 8, 3, 3)
    assert sd["bn0.running_var"].shape == (8,) and sd["head.weight"].shape == (5, 8)
    torch.testing.assert_close(out.run()[0], ir.reference[0], rtol=0, atol=1e-6)
    x = torch.randn(3, 3, 8, 8)  # the batch stays dynamic
    torch.testing.assert_close(out.run({"x": x})[0], ir.run({"x": x})[0], rtol=0, atol=1e-6)
    assert out.params < 0.35 * ir.params
    assert sum(layer.flops for layer in out.layers if layer.depth == 1) < \
        0.4 * sum(layer.flops for layer in ir.layers if layer.depth == 1)


# ------------------------------------------------------------ (b) residual coupling


class TwoBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 16, 3, padding=1)
        self.b = nn.Conv2d(4, 16, 1)
        self.c = nn.Conv2d(16, 6, 1)

    def forward(self, x):
        return self.c(torch.relu(self.a(x) + self.b(x)))


def test_residual_add_prunes_both_convs_at_the_same_indices():
    torch.manual_seed(1)
    m = TwoBranch().eval()
    x = torch.randn(2, 4, 6, 6)
    ir = _ir(m, x=x)
    [g] = [g for g in dependency_groups(ir) if g.dead is None]
    assert len(g.producers) == 2 and g.units == 16
    out = prune(ir, 0.5, "l2")
    _check(out)
    kept = _kept(out, "a")
    assert _kept(out, "b") == kept and len(kept) == 8
    # Expected: the eager model with the same channels sliced out of a, b and c
    sd = _state(out)
    idx = torch.tensor(kept)
    torch.testing.assert_close(sd["a.weight"], m.a.weight[idx].detach())
    torch.testing.assert_close(sd["b.weight"], m.b.weight[idx].detach())
    torch.testing.assert_close(sd["c.weight"], m.c.weight[:, idx].detach())
    with torch.no_grad():
        h = torch.relu(F.conv2d(x, m.a.weight[idx], m.a.bias[idx], padding=1)
                       + F.conv2d(x, m.b.weight[idx], m.b.bias[idx]))
        expected = F.conv2d(h, m.c.weight[:, idx], m.c.bias)
    torch.testing.assert_close(out.run()[0], expected, rtol=1e-5, atol=1e-6)
    # L2 over the whole group: a and b weights plus c's columns
    norms = (m.a.weight.pow(2).sum((1, 2, 3)) + m.a.bias.pow(2) + m.b.weight.pow(2).sum((1, 2, 3))
             + m.b.bias.pow(2) + m.c.weight.pow(2).sum((0, 2, 3))).detach()
    assert kept == sorted(norms.argsort(descending=True)[:8].tolist())
    # 60% would keep 7 channels; rounded up to a multiple of 4 it keeps 8, the same ones
    assert _kept(prune(ir, 0.6, "l2", min_channels=1, multiple=4), "a") == kept


# ------------------------------------------------------------ (c) depthwise and grouped convs


class Separable(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=groups)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.out(F.relu6(self.dw(F.relu6(self.pw(x)))))


@pytest.mark.parametrize("groups", [16, 4])
def test_depthwise_and_grouped_convs_follow_their_producer(groups):
    torch.manual_seed(2)
    m = Separable(groups).eval()
    x = torch.randn(2, 3, 8, 8)
    ir = _ir(m, x=x)
    [g] = [g for g in dependency_groups(ir) if g.dead is None]
    per_unit = 1 if groups == 16 else 4  # a grouped conv keeps whole groups of 4 channels
    assert g.units == 16 // per_unit and g.unit_channels() == per_unit
    out = prune(ir, 0.5, "l2", min_channels=1)
    _check(out)
    units = _kept(out, "pw")
    idx = torch.tensor([u * per_unit + i for u in units for i in range(per_unit)])
    assert len(idx) == 8
    conv = next(n for n in out.program.graph.nodes
                if n.target is torch.ops.aten.convolution.default and n.args[8] != 1)
    assert conv.args[8] == groups // 2
    with torch.no_grad():
        h = F.relu6(F.conv2d(x, m.pw.weight[idx], m.pw.bias[idx]))
        dw_w = m.dw.weight[idx]  # rows of the kept groups; a group's inputs are whole
        h = F.relu6(F.conv2d(h, dw_w, m.dw.bias[idx], padding=1, groups=groups // 2))
        expected = F.conv2d(h, m.out.weight[:, idx], m.out.bias)
    torch.testing.assert_close(out.run()[0], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ (d) concatenation


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(3, 16, 3, padding=1)
        self.c = nn.Conv2d(32 + 3, 4, 1)

    def forward(self, x):
        return self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x)), x], 1))


def test_concat_offsets_the_consumer_columns():
    torch.manual_seed(3)
    m = Concat().eval()
    x = torch.randn(2, 3, 6, 6)
    out = prune(_ir(m, x=x), 0.5, "l2")
    _check(out)
    ka, kb = _kept(out, "a"), _kept(out, "b")
    cols = torch.tensor(ka + [16 + i for i in kb] + [32, 33, 34])  # the input's channels stay
    assert _state(out)["c.weight"].shape == (4, 19, 1, 1)
    torch.testing.assert_close(_state(out)["c.weight"], m.c.weight[:, cols].detach())
    with torch.no_grad():
        h = torch.cat([torch.relu(F.conv2d(x, m.a.weight[ka], m.a.bias[ka])),
                       torch.relu(F.conv2d(x, m.b.weight[kb], m.b.bias[kb], padding=1)), x], 1)
        expected = F.conv2d(h, m.c.weight[:, cols], m.c.bias)
    torch.testing.assert_close(out.run()[0], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ (e) MLP hidden units, norms


def test_mlp_hidden_units_planted_in_a_transformer_like_model():
    torch.manual_seed(4)
    m = ResidualMLP().eval()
    with torch.no_grad():
        for block in m.blocks:  # hidden width 64: even units dead
            z = torch.arange(0, 64, 2)
            block.fc1.weight[z] = 0
            block.fc1.bias[z] = 0
            block.fc2.weight[:, z] = 0
    ir = _ir(m, x=torch.randn(2, 16))
    out = prune(ir, 0.5, "l2", through_norms=False)
    _check(out)
    groups = out.annotations["passes"][-1]["groups"]
    assert len(groups) == 6 and all(g["kept"] == list(range(1, 64, 2)) for g in groups)
    assert _state(out)["blocks.0.fc1.weight"].shape == (32, 32)
    assert _state(out)["blocks.0.fc2.weight"].shape == (32, 32)
    assert _state(out)["blocks.0.norm.weight"].shape == (32,)  # the residual stream stays
    torch.testing.assert_close(out.run()[0], ir.reference[0], rtol=0, atol=1e-6)


class NormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def test_layer_norm_over_the_channels_is_sliced_with_its_shape():
    torch.manual_seed(5)
    m = NormNet().eval()
    x = torch.randn(4, 8)
    ir = _ir(m, x=x)
    with pytest.raises(StopIteration):  # whole with through_norms=False
        _kept(prune(ir, 0.5, "l2", through_norms=False), "fc1")
    out = prune(ir, 0.5, "l2")
    _check(out)
    k = _kept(out, "fc1")
    assert out.annotations["passes"][-1]["groups"][0]["approx_norm"] is True
    ln = next(n for n in out.program.graph.nodes
              if n.target is torch.ops.aten.native_layer_norm.default)
    assert list(ln.args[1]) == [16]
    with torch.no_grad():
        h = F.layer_norm(F.linear(x, m.fc1.weight[k], m.fc1.bias[k]), [16],
                         m.norm.weight[k], m.norm.bias[k])
        expected = F.linear(h, m.fc2.weight[:, k], m.fc2.bias)
    torch.testing.assert_close(out.run()[0], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ unknown uses stay whole


class Peek(nn.Module):
    """Reads 4 of the conv's channels by index: no group may prune them."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) + h[:, :4]


def test_unknown_uses_and_outputs_make_groups_unprunable():
    ir = _ir(Peek(), x=torch.randn(2, 3, 4, 4))
    groups = {g.producers[0]: g.dead for g in dependency_groups(ir)}
    assert groups["convolution"].startswith("sliced channels at slice")
    assert groups["convolution_1"] is not None
    out = prune(ir, 0.5)
    assert out.annotations["passes"][-1]["groups"] == [] and out.params == ir.params
    torch.testing.assert_close(out.run()[0], ir.reference[0])


def test_registered_pass_defaults_and_compile_with_passes_prune(tmp_path):
    from layerwise import api
    from tests.conftest import FIXTURES

    ir = _ir(_planted_cnn(), x=torch.randn(2, 3, 8, 8))
    out = get_pass("prune")(ir)  # `--passes prune`: a quarter of every group, by L2
    p = out.annotations["passes"][-1]
    assert (p["ratio"], p["criterion"], p["multiple"]) == (0.25, "l2", 8)
    assert p["groups"] == []  # 12 of 16 channels round up to 16: nothing to gain
    out = prune(ir, multiple=4)
    assert all(len(g["kept"]) == 12 and set(ODD) <= set(g["kept"])
               for g in out.annotations["passes"][-1]["groups"])
    torch.testing.assert_close(out.run()[0], ir.reference[0], rtol=0, atol=1e-6)
    manifest = api.compile(f"{FIXTURES}:residual_mlp",
                           api.CompileOptions(out=str(tmp_path / "b"), passes="prune", db="none"))
    assert manifest["verification"]["passed"]
    [step] = [s for s in manifest["plan"]["passes"] if s["name"] == "prune"]
    assert manifest["sizes"]["params"] == step["params"][1] < step["params"][0]


def test_bad_arguments_name_the_fix():
    ir = _ir(TwoBranch(), x=torch.randn(1, 4, 4, 4))
    with pytest.raises(PruneError, match="use one of l2, activation, taylor"):
        prune(ir, criterion="fisher")
    with pytest.raises(PruneError, match=r"must lie in \[0, 1\)"):
        prune(ir, ratio=1.5)


# ------------------------------------------------------------ (f) attention heads


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(6)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)
    return BertModel(cfg).eval()


def test_attention_head_with_dead_output_projection_is_removed():
    m = _bert()
    dead = {0: 0, 1: 1}  # layer -> head whose q, k, v rows and output columns are zero
    with torch.no_grad():
        for i, h in dead.items():
            att = m.encoder.layer[i].attention
            rows = slice(16 * h, 16 * h + 16)
            for lin in (att.self.query, att.self.key, att.self.value):
                lin.weight[rows] = 0
                lin.bias[rows] = 0
            att.output.dense.weight[:, rows] = 0
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    ir = lift(Source("bert", m, {"input_ids": ids, "attention_mask": mask}, "text"))
    out = prune(ir, ratio=0.0, heads_ratio=0.5)
    _check(out)
    groups = out.annotations["passes"][-1]["groups"]
    assert [(g["kind"], g["units"], g["unit_channels"], g["kept"]) for g in groups] == \
        [("heads", 2, 16, [1]), ("heads", 2, 16, [0])]
    sd = _state(out)
    p = "encoder.layer.0.attention."
    assert sd[p + "self.query.weight"].shape == (16, 32)
    assert sd[p + "self.value.bias"].shape == (16,)
    assert sd[p + "output.dense.weight"].shape == (32, 16)
    for a, b in zip(out.run(), ir.reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    feeds = {"input_ids": torch.randint(0, 100, (3, 8)),
             "attention_mask": torch.ones(3, 8, dtype=torch.long)}
    for a, b in zip(out.run(feeds), ir.run(feeds)):  # the head count folded with the batch
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_bert_heads_and_mlp_export_to_onnx(tmp_path):
    from layerwise.compiler.passes import run_passes
    from layerwise.runtime import compare, open_runner
    from layerwise.targets import onnx as onnx_target

    ids = torch.randint(0, 100, (2, 8))
    ir = lift(Source("bert", _bert(), {"input_ids": ids,
                                       "attention_mask": torch.ones(2, 8, dtype=torch.long)},
                     "text"))
    out = run_passes(prune(ir, 0.5, "taylor", min_channels=1), ["legalize_views"])
    kinds = sorted(g["kind"] for g in out.annotations["passes"][-2]["groups"])
    assert kinds == ["heads", "heads", "linear", "linear"]
    entry = onnx_target.emit(out, tmp_path)
    feeds = {k: v.numpy() for k, v in out.example_inputs.items()}
    got = open_runner("onnx", tmp_path / entry["file"]).run(feeds)
    assert compare(got, [t.numpy() for t in out.run()], 1e-4)["passed"]


# ------------------------------------------------------------ (g, h) real models


def test_mobilenet_v2_half_pruned_shrinks_and_exports(tmp_path):
    from layerwise.compiler.passes import run_passes
    from layerwise.runtime import compare, open_runner
    from layerwise.targets import onnx as onnx_target

    src = load_source("zoo:mobilenet-v2")
    ir = lift(src)
    out = prune(ir, 0.5, "l2")
    _check(out)
    groups = out.annotations["passes"][-1]["groups"]
    assert len(groups) == 25  # every block's expansion, the residual stages, the stem
    # Expected per conv: FLOPs scale by (kept out / out) * (kept in / in) from the weights
    old = {layer.path: layer for layer in ir.layers}
    sd0, sd1 = _state(ir), _state(out)
    for layer in out.layers:
        if layer.type != "Conv2d":
            continue
        w0, w1 = sd0[layer.path + ".weight"], sd1[layer.path + ".weight"]
        ratio = (w1.shape[0] / w0.shape[0]) * (w1.shape[1] / w0.shape[1])
        assert layer.flops == pytest.approx(old[layer.path].flops * ratio, rel=0.02)
    flops = [sum(layer.flops for layer in t.layers if layer.depth == 1) for t in (ir, out)]
    assert 0.25 < flops[1] / flops[0] < 0.32
    assert 0.3 < out.params / ir.params < 0.4  # the 1280 x 1000 classifier halves only
    out = run_passes(out, ["legalize_views"])
    entry = onnx_target.emit(out, tmp_path)
    feeds = {k: v.numpy() for k, v in out.example_inputs.items()}
    got = open_runner("onnx", tmp_path / entry["file"]).run(feeds)
    assert compare(got, [t.numpy() for t in out.run()], 1e-4)["passed"]


def test_minilm_heads_and_mlp_prune_and_run():
    ir = lift(load_source("zoo:minilm-l6"))
    out = prune(ir, 0.5, "l2", heads_ratio=0.5)
    _check(out)
    groups = out.annotations["passes"][-1]["groups"]
    heads = [g for g in groups if g["kind"] == "heads"]
    assert len(heads) == 6 and all(len(g["kept"]) == 6 and g["unit_channels"] == 32
                                   for g in heads)
    sd = _state(out)
    assert sd["bert.encoder.layer.3.attention.self.key.weight"].shape == (192, 384)
    assert sd["bert.encoder.layer.3.intermediate.dense.weight"].shape == (768, 384)
    flops = [sum(layer.flops for layer in t.layers if layer.depth == 1) for t in (ir, out)]
    assert 0.45 < flops[1] / flops[0] < 0.55
    emb = out.run()[0]
    assert emb.shape == ir.reference[0].shape and torch.isfinite(emb).all()
