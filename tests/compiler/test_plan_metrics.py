"""The built-in task metrics on answers worked out by hand, and the judge's direction for a
metric where lower is better."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerwise.analysis.execution import Batch
from layerwise.base.errors import LayerwiseError
from layerwise.compiler.plan.metrics import auc, linear_probe, metric, perplexity
from layerwise.judge import make_judge, resolve_metric


def test_recall_at_k_counts_a_same_label_neighbour():
    # 0 and 1 share a label and are nearest each other; 2 and 3 (label 1) are nearest to 1 and 0
    e = np.array([[1.0, 0.0], [0.99, 0.1], [0.9, 0.3], [0.0, -1.0]])
    y = np.array([0, 0, 1, 1])
    assert metric("recall@1")(e, y) == pytest.approx(0.5)  # 0 and 1 hit; 2 and 3 do not
    assert metric("recall@3")(e, y) == 1.0
    with pytest.raises(LayerwiseError, match="two examples"):
        metric("recall@1")(e, np.arange(4))


def test_ndcg_per_row_and_as_one_list():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.5], [0.1, 0.2, 0.3]])
    # relevant item at rank 0, rank 2, rank 1
    want = (1.0 + 1 / np.log2(4) + 1 / np.log2(3)) / 3
    assert metric("ndcg@3")(scores, np.array([0, 0, 1])) == pytest.approx(want)
    assert metric("ndcg@2")(scores, np.array([0, 0, 1])) == pytest.approx(
        (1.0 + 1 / np.log2(3)) / 3)
    one = np.array([[0.9], [0.8], [0.1]])
    assert metric("ndcg@3")(one, np.array([2, 1, 0])) == pytest.approx(1.0)
    assert metric("ndcg@3")(one, np.array([0, 1, 2])) < 0.6
    assert metric("ndcg@0") is None and metric("ndcg@x") is None


def test_auc_counts_ties_half():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auc(np.array([[0.5], [0.5]]), np.array([0, 1])) == 0.5
    two = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert auc(two, np.array([0, 1])) == 1.0
    with pytest.raises(LayerwiseError, match="both 0 and 1"):
        auc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_linear_probe_separates_what_a_line_separates():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 8))
    y = (x[:, 0] + x[:, 3] > 0).astype(int)
    assert linear_probe(x, y) > 0.9
    assert linear_probe(rng.normal(size=(100, 8)), y) < 0.75


def test_perplexity_of_known_distributions():
    v = 4
    uniform = np.zeros((2, 5, v))
    tokens = np.array([[0, 1, 2, 3, 0], [1, 1, 1, -1, -1]])
    assert perplexity(uniform, tokens) == pytest.approx(v)
    sure = np.full((1, 3, v), -30.0)
    sure[0, 0, 2] = sure[0, 1, 3] = 30.0
    assert perplexity(sure, np.array([[0, 2, 3]])) == pytest.approx(1.0)
    with pytest.raises(LayerwiseError, match=r"\[N, T, V\]"):
        perplexity(np.zeros((2, 4)), np.zeros((2, 4), int))


def test_perplexity_judge_takes_tokens_as_labels_and_a_rise_as_a_loss():
    ids = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    held = [Batch({"input_ids": ids, "attention_mask": mask})] * 4
    judge = make_judge(held, None, "perplexity", classify=False, confidence=0)
    assert judge.labels[1, 3] == -1  # padding is not predicted
    base = np.zeros((8, 4, 4))
    judge.set_reference(lambda batches: np.concatenate([base[:2 * len(batches)]]))
    assert judge.reference["search"] == pytest.approx(4.0)
    worse = np.zeros((4, 4, 4))
    worse[:, :, 0] = 1.0  # token 0 favoured: most targets get less probability
    q = judge.point(worse)
    assert q < 1.0
    assert q == pytest.approx(4.0 / perplexity(worse, judge.labels))
    record = judge.record()["task_metric"]
    assert "rise" in record["max_drop_means"] and record["source"] == "held-out --data"
    sure = make_judge(held, None, "perplexity", classify=False, confidence=0.75)
    sure.set_reference(lambda batches: np.concatenate([base[:2 * len(batches)]]))
    assert sure.quality(worse) <= q + 1e-12  # the pessimistic bound, from per-example parts
    assert sure.quality(base[:4]) == pytest.approx(1.0)
    with pytest.raises(LayerwiseError, match="recall@K"):
        resolve_metric("recall")
