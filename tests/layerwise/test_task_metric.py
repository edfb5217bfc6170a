"""The plan search judged by the user's task metric on labelled --eval data: a planted block
that the task does not need is dropped where label-free fidelity would keep it; the metrics,
the labelled formats and the mistakes around them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.plan.metrics import accuracy, centroid_accuracy, macro_f1
from tests.conftest import FIXTURES, ROOT
from tests.fixtures.models import noisy_mlp, noisy_mlp_labels

SPEC = f"{FIXTURES}:noisy_mlp"


def _compile(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerwise", "compile", SPEC, "--db", "none",
                           *args], capture_output=True, text=True, cwd=ROOT, check=False,
                          timeout=900)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Unlabelled --data and labelled --eval for noisy_mlp."""
    root = tmp_path_factory.mktemp("sets")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 16, generator=g)
    np.savez(root / "data.npz", x=x.numpy())
    xe = torch.randn(256, 16, generator=g)
    np.savez(root / "eval.npz", x=xe.numpy(), labels=noisy_mlp_labels(xe).numpy())
    np.savez(root / "unlabelled.npz", x=xe.numpy())
    return root


def test_metrics_on_known_answers():
    scores = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert accuracy(scores, np.array([0, 1, 1, 1])) == 0.75
    # class 0: tp 1, fp 1, fn 0 -> 2/3; class 1: tp 2, fp 0, fn 1 -> 4/5
    assert macro_f1(scores, np.array([0, 1, 1, 1])) == pytest.approx((2 / 3 + 4 / 5) / 2)
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 10
    labels = np.repeat(np.arange(4), 20)
    tight = centres[labels] + rng.normal(size=(80, 4))
    assert centroid_accuracy(tight, labels) == 1.0
    assert centroid_accuracy(rng.normal(size=(80, 4)), labels) < 0.6  # chance is 0.25
    with pytest.raises(LayerwiseError, match="2 classes"):
        centroid_accuracy(tight, np.zeros(80, int))


def test_task_metric_drops_the_block_the_task_does_not_need(tmp_path, sets):
    model = noisy_mlp()[0]
    x = torch.from_numpy(np.load(sets / "eval.npz")["x"])
    with torch.no_grad():
        skipped = model.head(model.blocks[2](model.blocks[0](model.inp(x))))
        cos = torch.nn.functional.cosine_similarity(model(x), skipped).mean().item()
    assert cos < 0.98  # label-free fidelity at --max-drop 2% keeps the middle block

    out = tmp_path / "b"
    proc = _compile("--data", str(sets / "data.npz"), "--eval", str(sets / "eval.npz"),
                    "--metric", "accuracy", "--max-drop", "2%", "--search-budget", "10m",
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "manifest.json").read_text())["search"]
    assert s["quality_metric"] == "accuracy on --eval"
    task = s["task_metric"]
    assert task["decide_examples"] == task["test_examples"] == 128
    assert s["chosen"]["drop"] == ["blocks.1"]
    # the drop order is measured on the task: the middle block first
    assert s["drop_order_basis"].startswith("measured task damage")
    assert s["drop_order"][0] == "blocks.1"
    assert s["wall_s"] >= s["seconds"] > 0
    # every weighted layer's int8 sensitivity, joined with its cost and its block's importance
    layers = {r["layer"]: r for r in s["layers"]}
    assert {"inp", "head", "blocks.0.fc1", "blocks.2.fc2"} <= set(layers)
    assert layers["blocks.0.fc1"]["block"] == "blocks.0"
    assert layers["blocks.0.fc1"]["block_importance"] is not None
    assert all(r["int8_error"] >= 0 and 0 < r["flops_share"] < 1 for r in s["layers"]), s["layers"]
    assert "INT8 sensitivity" in (out / "report.html").read_text()
    chosen = s["chosen"]["task_metric"]
    # without the planted block the model computes the task itself: better on both splits
    assert chosen["test"] > task["reference"]["test"] + 0.05
    assert chosen["decide"] > task["reference"]["decide"]
    assert "held-back test split of 128" in (out / "report.html").read_text()
    assert "plan search: Pareto frontier (accuracy on --eval" in proc.stdout
    assert "◀ chosen" in proc.stdout and "128 examples the search never saw" in proc.stdout


def test_report_says_what_the_heal_saw_and_kept(tmp_path, sets):
    data = tmp_path / "data.npz"  # enough batches for the heal to hold some out
    np.savez(data, x=np.random.default_rng(2).standard_normal((160, 16)).astype(np.float32))
    out = tmp_path / "b"
    proc = _compile("--data", str(data), "--eval", str(sets / "eval.npz"),
                    "--max-drop", "2%", "--heal-steps", "40", "--heal-lr", "1e-3",
                    "--search-budget", "10m", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    heal = [p for p in m["plan"]["passes"] if p["name"] == "heal"]
    chosen_plan = m["search"]["chosen"]
    assert (chosen_plan["drop"] or chosen_plan["prune"]) and len(heal) == 1
    chosen = m["search"]["chosen"]["task_metric"]
    assert 0 < chosen["test_fidelity"] <= 1
    page = (out / "report.html").read_text()
    assert "<h2>Healing</h2>" in page and 'aria-label="healing curve"' in page
    assert f"The heal saw {heal[0]['examples']} examples of --data" in page
    assert f"{heal[0]['held_examples']} held-out examples of --data chose the student" in page
    assert "examples neither the heal nor the search saw): fidelity" in page


def test_custom_metric_and_mistakes(tmp_path, sets):
    out = tmp_path / "b"
    common = ("--data", str(sets / "data.npz"), "--max-drop", "2%", "--out", str(out))
    for args, words in (
            (("--eval", str(sets / "unlabelled.npz")), "has no labels"),
            (("--eval", str(sets / "eval.npz"), "--metric", "top5"), "unknown --metric"),
            (("--eval", str(sets / "eval.npz"), "--metric", "no_such_module:f"),
             "cannot import --metric")):
        proc = _compile(*common, *args)
        assert proc.returncode == 2, proc.stderr[-2000:]
        line, = [ln for ln in proc.stderr.splitlines() if ln.startswith("layerwise:")]
        assert words in line and "Traceback" not in proc.stderr
        assert not out.exists()
    proc = _compile("--eval", str(sets / "eval.npz"), "--out", str(out))
    assert proc.returncode == 2 and "add --max-drop" in proc.stderr
    proc = _compile("--search-budget", "5m", "--out", str(out))
    assert proc.returncode == 2 and "--search-budget bounds the plan search" in proc.stderr


def test_labelled_text_from_tsv(tmp_path):
    """`text<TAB>label` lines become MiniLM token batches with labels numbered in sorted
    order; a line without a label is refused naming it."""
    from layerwise.sources import load_source
    from layerwise.sources.data import DataError, load_batches

    source = load_source("zoo:minilm-l6")

    class Shapes:  # what the loader reads of an IR: the example inputs
        example_inputs = source.inputs

    path = tmp_path / "t.tsv"
    path.write_text("the cat sat\tspam\nhello there\tham\nbuy now\tspam\n")
    (b,) = load_batches(str(path), Shapes(), source.tokenizer, batch_size=8)
    assert b.labels.tolist() == [1, 0, 1]
    ids = b.inputs["input_ids"]
    assert ids.shape[0] == 3 and ids.shape[1] == source.inputs["input_ids"].shape[1]
    assert source.tokenizer.decode(ids[1], skip_special_tokens=True) == "hello there"
    path.write_text("no label here\n")
    with pytest.raises(DataError, match="line 1 is not `text<TAB>label`"):
        load_batches(str(path), Shapes(), source.tokenizer)


def test_the_bound_is_judged_pessimistically():
    """A candidate one point worse than the original on 400 examples: the point estimate
    says a 1% loss; at 90% confidence (paired bootstrap) the loss counted is larger, and a
    candidate identical to the original loses nothing either way."""
    from layerwise.analysis.execution import Batch
    from layerwise.judge import make_judge

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 800)
    batches = [Batch({"x": torch.zeros(100, 1)}, torch.from_numpy(labels[i:i + 100]))
               for i in range(0, 800, 100)]
    point = make_judge([], batches, "accuracy", True, confidence=0.0)
    sure = make_judge([], batches, "accuracy", True, confidence=0.9)
    decide = point.labels
    ref = np.eye(4)[np.where(rng.random(len(decide)) < 0.8, decide, (decide + 1) % 4)]
    for judge in (point, sure):
        judge.set_reference(lambda b, r=ref: r if b is judge.batches else np.eye(4)[
            np.concatenate([x.labels.numpy() for x in b])])
    worse = ref.copy()
    right = np.flatnonzero(ref.argmax(1) == decide)[:4]  # 4 of 400 now wrong
    worse[right] = np.roll(worse[right], 1, axis=1)
    assert len(decide) == 400
    assert point.quality(worse) == pytest.approx(0.99)
    assert sure.quality(worse) < 0.99
    assert point.quality(ref) == sure.quality(ref) == 1.0
    assert "90% one-sided confidence" in sure.record()["task_metric"]["max_drop_means"]


def test_perplexity_judges_a_language_model_on_held_out_text(tmp_path):
    """A causal LM folder loads with its head (logits out); --metric perplexity needs no
    labels: the held-out --data text is its own, and the bound is a relative rise."""
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    from layerwise.sources.zoo import minilm_path
    from tests.conftest import TOKENIZER_FILES

    torch.manual_seed(0)
    folder = tmp_path / "lm"
    GPT2LMHeadModel(GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=2,
                               n_positions=64)).save_pretrained(folder)
    for f in TOKENIZER_FILES:
        if (minilm_path() / f).exists():
            shutil.copy(minilm_path() / f, folder / f)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"line {i} of the text the model reads, then {i * 7 % 13}"
                              for i in range(64)))
    out = tmp_path / "b"
    proc = subprocess.run([sys.executable, "-m", "layerwise", "compile", f"hf:{folder}",
                           "--db", "none", "--data", str(text), "--metric", "perplexity",
                           "--max-drop", "5%", "--search-budget", "10m", "--out", str(out)],
                          capture_output=True,
                          text=True, cwd=ROOT, check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["task"] == "text-generation" and m["outputs"][0]["shape"][-1] == 30522
    task = m["search"]["task_metric"]
    assert task["name"] == "perplexity" and task["source"] == "held-out --data"
    assert task["lower_is_better"] and "rise" in task["max_drop_means"]
    chosen = m["search"]["chosen"]["task_metric"]
    assert chosen["decide"] <= task["reference"]["decide"] * 1.05
    assert "perplexity on held-out --data" in proc.stdout
