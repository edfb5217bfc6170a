"""Frontend and IR: the layer table is right and the IR round-trips through .pt2 + sidecars."""

from __future__ import annotations

import pytest
import torch

from layerwise.base.errors import ExportError
from layerwise.compiler.frontend import lift
from layerwise.compiler.ir import IR
from layerwise.compiler.layers import blocks
from layerwise.sources import load_source
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def resnet():
    src = load_source("timm:resnet18")
    return src, lift(src)


def test_layer_table_resnet18(resnet):
    src, ir = resnet
    assert [b.path for b in blocks(ir.layers)] == [
        f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    conv1 = ir.layer("conv1")
    assert conv1.kind == "conv" and conv1.params == 3 * 64 * 7 * 7
    # 2 FLOPs per MAC: batch 2, 64 x 112 x 112 outputs, 3*7*7 MACs each
    assert conv1.flops == 2 * 2 * 64 * 112 * 112 * 3 * 7 * 7
    assert ir.params == sum(p.numel() for p in src.module.parameters())
    top = sum(layer.params for layer in ir.layers if layer.depth == 1)
    assert top == ir.params
    block = ir.layer("layer2.0")
    assert len(block.inputs) == 1 and len(block.outputs) == 1
    assert ir.meta["dynamic_inputs"] == ["x"]
    assert ir.input_specs()[0]["shape"] == ["batch", 3, 224, 224]


def test_core_aten_only(resnet):
    _, ir = resnet
    targets = {n.target for n in ir.program.graph.nodes if n.op == "call_function"}
    ops = {t for t in targets if isinstance(t, torch._ops.OpOverload)}
    core = {t for t in ops if torch.Tag.core in t.tags or t.namespace != "aten"}
    # view-like and getitem ops are allowed; every compute op must be Core ATen
    assert ops - core <= {torch.ops.aten.view.default}, ops - core


def test_ir_round_trip(resnet, tmp_path):
    _, ir = resnet
    path = ir.save(tmp_path / "model.pt2")
    back = IR.load(path)
    assert [layer.to_json() for layer in back.layers] == [layer.to_json() for layer in ir.layers]
    assert back.meta == ir.meta and back.output_names == ir.output_names
    for a, b in zip(back.run(), ir.run()):
        torch.testing.assert_close(a, b)
    src = load_source(str(path))  # a saved IR is a SPEC too
    assert src.program is not None and lift(src).layers[0].path == ir.layers[0].path


def test_transformer_blocks(hf_folders):
    ir = lift(load_source(f"hf:{hf_folders['t5']}"))
    paths = [b.path for b in blocks(ir.layers)]
    assert paths == ["encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"]
    kinds = {layer.kind for layer in ir.layers}
    assert {"attention", "embedding", "norm", "block"} <= kinds


def test_untraceable_error_names_line():
    with pytest.raises(ExportError) as e:
        lift(load_source(f"{FIXTURES}:untraceable"))
    assert "models.py" in str(e.value) and ".item()" in str(e.value)


def test_stacked_lstm_splits_into_layer_blocks():
    ir = lift(load_source(f"{FIXTURES}:lstm_classifier"))
    lstm = ir.layer("lstm")
    l0, l1 = ir.layer("lstm.l0"), ir.layer("lstm.l1")
    assert [b.path for b in blocks(ir.layers)] == ["lstm.l0", "lstm.l1"]
    assert l0.group == l1.group == "lstm" and l0.kind == l1.kind == "recurrent"
    # 4 gates x hidden 32 x (input 32 + hidden 32) weights + two 128 biases per layer
    assert l0.params == l1.params == 4 * 32 * 64 + 2 * 128 == lstm.params // 2
    assert set(l0.nodes).isdisjoint(l1.nodes) and set(l0.nodes) | set(l1.nodes) < set(lstm.nodes)
    assert l0.flops + l1.flops <= lstm.flops and min(l0.flops, l1.flops) > 0.45 * lstm.flops
    # layer 1 reads layer 0's output sequence: same time-major shape in and out
    assert l0.outputs == [n for n in l1.inputs if n in l0.nodes]


def test_dropping_an_lstm_layer_removes_its_weights():
    from layerwise.analysis import analyze
    from layerwise.compiler.passes.drop_layers import drop_layers

    ir = lift(load_source(f"{FIXTURES}:lstm_classifier"))
    res = analyze(ir, [dict(ir.example_inputs)], methods=["block_influence", "layer_ablation"])
    assert res["droppable"] == ["lstm.l0", "lstm.l1"]
    assert all(v > 0 for s in res["scores"].values() for v in s.values())
    small = drop_layers(ir, ["lstm.l1"])
    assert small.params == ir.params - ir.layer("lstm.l1").params
    assert not blocks(small.layers)  # one layer left: nothing to split
    # the dropped model is the same model with a one-layer LSTM holding layer 0's weights
    module = load_source(f"{FIXTURES}:lstm_classifier").module
    one = torch.nn.LSTM(32, 32, num_layers=1, batch_first=True)
    one.load_state_dict({k: v for k, v in module.lstm.state_dict().items() if k.endswith("_l0")})
    with torch.no_grad():
        seq, _ = one(module.embed(ir.example_inputs["tokens"]))
        expected = module.head(seq[:, -1])
    torch.testing.assert_close(small.run()[0], expected)


def test_flops_share_counts_the_whole_graph_for_a_module_list():
    """Blocks in an nn.ModuleList sit at depth 2 (the list itself runs no op): the shares are
    of the whole graph's FLOPs, so the top-level parts sum to one."""
    from layerwise import api
    from tests.conftest import FIXTURES

    r = api.inspect(f"{FIXTURES}:residual_mlp")
    shares = {la["path"]: la["flops_share"] for la in r["layers"]}
    parts = ["inp", "head", *(f"blocks.{i}" for i in range(6))]
    assert sum(shares[p] for p in parts) == pytest.approx(1.0, abs=0.01)
    assert max(shares.values()) <= 1.0
