"""Meta-learning from a history, task adapters, data loading, selector, ensemble, merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from layerwise.analysis import analyze
from layerwise.analysis.execution import Context, merge_states, run_baseline
from layerwise.analysis.ensemble import aggregate, spearman
from layerwise.analysis.methods import MethodError, get_method
from layerwise.analysis.select import select_methods
from layerwise.analysis.stats import CosineStats, CrossMoments
from layerwise.analysis.tasks import TASKS, TaskError, get_task
from layerwise.sources.data import DataError, load_batches
from tests.analysis.planted import CRITICAL, IDENTITY, N_BLOCKS, planted


def test_meta_learning_transfers_from_other_models():
    records = []
    for kind in ("mlp", "cnn"):
        ir, data, _ = planted(kind)
        rec = analyze(ir, data, methods=["layer_ablation"])["history_record"]
        assert rec["target"] == "layer_ablation" and len(rec["blocks"]) == N_BLOCKS
        records.append(rec)
    ir, _, paths = planted("transformer")
    res = analyze(ir, None, methods=["meta_learning"], history=records)  # no data at all
    assert res["history_record"] is None  # data-free scores are not recorded as measured truth
    s = res["scores"]["meta_learning"]
    assert min(s, key=s.get) == paths[IDENTITY], s
    with pytest.raises(MethodError, match="analyse a few other models"):
        analyze(ir, None, methods=["meta_learning"], history=[])
    with pytest.raises(MethodError, match="analyse a few other models"):  # its own record only
        analyze(ir, None, methods=["meta_learning"], history=[
            {**records[0], "model": ir.meta["spec"]}])


def test_data_free_methods_need_no_data():
    ir, _, paths = planted("cnn")
    res = analyze(ir, None, methods="auto")
    assert set(res["methods"]) <= {"spectral_analysis", "topology_analysis", "meta_learning"}
    assert res["ranking"][-1] == paths[IDENTITY]
    with pytest.raises(MethodError, match="needs data"):
        analyze(ir, None, methods=["block_influence"])


def test_selector_respects_budget_and_explains():
    sel = select_methods("transformer", "fidelity", 64, 4.0, 6)
    assert sel.estimated_cost <= 4.0 and "block_influence" in sel.methods
    assert "layer_ablation" not in sel.methods and "costs" in sel.reasons["layer_ablation"]
    assert all(name in sel.reasons for name in sel.methods)
    rich = select_methods("cnn", "classification", 64, 100.0, 6, has_labels=True)
    assert "layer_ablation" in rich.methods and "attention_analysis" not in rich.methods
    none = select_methods("mlp", "fidelity", 0, 100.0, 6)
    assert none.methods == ["spectral_analysis", "topology_analysis"]


def test_classification_with_labels_and_metrics():
    ir, data, paths = planted("mlp")
    with torch.no_grad():
        labels = [ir.module()(**b).argmax(-1) for b in data]
    res = analyze(ir, data, methods=["layer_ablation", "fisher_information"],
                  task="classification", labels=torch.cat(labels))
    assert res["task"] == "classification" and res["metrics"]["accuracy"] == 1.0
    assert res["ranking"][0] == paths[CRITICAL]


def test_task_metrics():
    out = torch.tensor([[2.0, 0.1, 0.0], [0.0, 3.0, 0.2]])
    y = torch.tensor([0, 1])
    m = TASKS["classification"].metrics([out], [out], y)
    assert m["accuracy"] == 1.0 and m["f1_macro"] == 1.0
    emb = torch.randn(6, 4)
    assert TASKS["embedding"].metrics([emb], [emb])["recall@5"] == 1.0
    rel = torch.tensor([[3.0, 0.0, 1.0]])
    r = TASKS["recommendation"].metrics([torch.tensor([[0.9, 0.1, 0.5]])], [rel], rel)
    assert r["ndcg@10"] == pytest.approx(1.0) and r["auc"] == 1.0
    logits = torch.zeros(1, 4, 5)
    lm = TASKS["language-modeling"].metrics([logits], [logits], torch.zeros(1, 4).long())
    assert lm["perplexity"] == pytest.approx(5.0)
    with pytest.raises(TaskError, match="known tasks"):
        get_task("nope")


def test_data_npz_and_text(tmp_path):
    ir, _, _ = planted("mlp")
    np.savez(tmp_path / "d.npz", x=np.random.randn(10, 16).astype(np.float32),
             labels=np.arange(10))
    batches = load_batches(str(tmp_path / "d.npz"), ir, batch_size=4)
    assert [b.size for b in batches] == [4, 4, 2] and batches[0].labels.tolist() == [0, 1, 2, 3]
    (tmp_path / "t.txt").write_text("one line\n")
    with pytest.raises(DataError, match="no tokenizer"):
        load_batches(str(tmp_path / "t.txt"), ir)
    with pytest.raises(DataError, match="cannot read"):
        load_batches("nothing-here", ir)


def test_data_image_folder(tmp_path):
    from PIL import Image

    from layerwise.images import photos

    ir, _, _ = planted("cnn")  # one NCHW input, 3 x 8 x 8
    pics = photos()[:5]
    for i, pic in enumerate(pics):
        folder = tmp_path / ("cat" if i == 0 else "other")
        folder.mkdir(exist_ok=True)
        Image.fromarray(pic).save(folder / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    batches = load_batches(str(tmp_path), ir, batch_size=4)
    assert [b.size for b in batches] == [4, 1]
    x = torch.cat([b.inputs["x"] for b in batches])
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32
    # labels from the class subfolders, in sorted file order: cat/0.png, then other/*
    assert torch.cat([b.labels for b in batches]).tolist() == [0, 1, 1, 1, 1]
    # ImageNet normalisation of the resized photo
    small = np.asarray(Image.fromarray(pics[0]).resize((8, 8), Image.BILINEAR), np.float32)
    expected = (small / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, rtol=1e-5, atol=1e-5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_batches(str(tmp_path / "empty"), ir)
    with pytest.raises(DataError, match="one NCHW input"):
        load_batches(str(tmp_path), planted("mlp")[0])


def test_data_factory(tmp_path, monkeypatch):
    (tmp_path / "my_data.py").write_text(
        "import torch\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "class Named(TensorDataset):\n"
        "    def __getitem__(self, i):\n"
        "        x, y = super().__getitem__(i)\n"
        "        return {'x': x, 'labels': y}\n"
        "def loader():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    ds = Named(torch.randn(10, 16, generator=g), torch.arange(10))\n"
        "    return DataLoader(ds, batch_size=4)\n"
        "def wrong():\n"
        "    return [torch.zeros(3)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ir, _, _ = planted("mlp")
    batches = load_batches("my_data:loader", ir)
    assert [b.size for b in batches] == [4, 4, 2]
    assert torch.cat([b.labels for b in batches]).tolist() == list(range(10))
    assert analyze(ir, batches, methods=["block_influence"])["samples"] == 10
    with pytest.raises(DataError, match="yield dicts"):
        load_batches("my_data:wrong", ir)
    with pytest.raises(DataError, match="cannot import"):
        load_batches("my_data:missing", ir)


def test_ensemble_weights_agreeing_methods():
    paths = list("abcde")
    truth = {p: float(i) for i, p in enumerate(paths)}
    noisy = {"a": 1.0, "b": 0.0, "c": 2.0, "d": 3.0, "e": 4.0}
    anti = {p: -v for p, v in truth.items()}
    ens, w = aggregate({"good": truth, "ok": noisy, "bad": anti, "flat": dict.fromkeys(paths, 1.0)},
                       paths)
    rho = spearman([ens[p] for p in paths], list(truth.values()))
    assert rho >= spearman(list(noisy.values()), list(truth.values()))
    assert w["bad"] == 0.0 and w["flat"] == 0.0 and w["good"] >= w["ok"] > 0


def test_streaming_states_merge_like_one_pass():
    x, y = torch.randn(40, 8), torch.randn(40, 8)
    one, a, b = CosineStats(), CosineStats(), CosineStats()
    one.update(x, y)
    a.update(x[:15], y[:15])
    b.update(x[15:], y[15:])
    a.merge(b)
    assert a.mean_cos == pytest.approx(one.mean_cos)
    full, p, q = CrossMoments(), CrossMoments(), CrossMoments()
    full.update({0: x, 1: y})
    p.update({0: x[:15], 1: y[:15]})
    q.update({0: x[15:], 1: y[15:]})
    merge_states({"m": p}, {"m": q})
    assert p.cka(0, 1) == pytest.approx(full.cka(0, 1)) and full.cka(0, 0) == pytest.approx(1)


def test_shared_state_merges_across_workers():
    """Two halves of the data observed separately and merged give the one-pass result."""
    ir, data, paths = planted("mlp")
    from layerwise.analysis.execution import Batch, run_shared

    method = get_method("block_influence")
    whole = Context.build(ir, [Batch(b) for b in data], get_task("fidelity"))
    run_baseline(whole)
    expected = run_shared(whole, {"bi": method})[0]["bi"].scores
    states = []
    for half in (data[:2], data[2:]):
        ctx = Context.build(ir, [Batch(b) for b in half], get_task("fidelity"))
        run_baseline(ctx)
        st = method.start(ctx)
        probe = ctx.probe(tuple(sorted(method.requests(ctx).taps)))
        from layerwise.analysis.execution import Observation
        for i, b in enumerate(ctx.batches):
            outs, taps = probe(b.inputs)
            method.observe(st, Observation(i, b, outs, taps, {}, {}, {}, None), ctx)
        states.append(st)
    merged = method.finish(merge_states(states[0], states[1]), whole).scores
    for p in paths:
        assert merged[p] == pytest.approx(expected[p], abs=1e-9) or math.isnan(expected[p])
