"""Planted truth: every method finds the facts it can see (table in analysis/methods)."""

from __future__ import annotations

import math

import pytest

from layerwise.analysis import analyze
from layerwise.analysis.methods import METHODS
from tests.analysis.planted import CRITICAL, DUP_OF, DUPLICATE, IDENTITY, planted

# method -> planted facts it must find; "least": identity ranked last, "top": critical first,
# "dup": the duplicated pair reported. Mirrors the table in analysis/methods/__init__.py.
MUST_FIND: dict[str, set[str]] = {
    "fisher_information": {"least", "top"},
    "gradient_based": {"least", "top"},
    "layer_ablation": {"least", "top"},
    "mutual_information": {"least"},
    "layer_conductance": {"least", "top"},
    "shap_analysis": {"least", "top"},
    "attention_analysis": {"least", "top"},
    "neuron_activation": {"least", "top"},
    "gradient_flow": {"least", "top"},
    "layer_correlation": {"least", "top", "dup"},
    "information_bottleneck": {"least"},
    "causal_analysis": {"least", "top"},
    "uncertainty_quantification": {"least", "top"},
    "spectral_analysis": {"least", "top", "dup"},
    "topology_analysis": set(),
    "meta_learning": {"least"},  # tested in test_meta_learning.py (needs a history)
    "block_influence": {"least", "top"},
    "angular_distance": {"least", "top"},
}
KINDS = ["mlp", "cnn", "transformer"]


@pytest.fixture(scope="module", params=KINDS)
def analysed(request):
    ir, data, paths = planted(request.param)
    names = [m for m in METHODS if m != "meta_learning"]
    if request.param != "transformer":
        names.remove("attention_analysis")
    result = analyze(ir, data, methods=names)
    return request.param, result, paths


def test_table_covers_every_method():
    assert set(MUST_FIND) == set(METHODS)
    doc = __import__("layerwise.analysis.methods", fromlist=["x"]).__doc__
    for name in METHODS:
        assert f"| {name}" in doc


@pytest.mark.parametrize("method", [m for m in METHODS if "least" in MUST_FIND[m]
                                    and m != "meta_learning"])
def test_identity_block_is_least_important(analysed, method):
    kind, result, paths = analysed
    if method not in result["scores"]:
        pytest.skip(f"{method} does not apply to a {kind}")
    s = result["scores"][method]
    ident = s[paths[IDENTITY]]
    others = [v for p, v in s.items() if p != paths[IDENTITY] and not math.isnan(v)]
    assert ident <= min(others) + 1e-12 and ident < max(others), (kind, method, s)


@pytest.mark.parametrize("method", [m for m in METHODS if "top" in MUST_FIND[m]])
def test_critical_block_is_most_important(analysed, method):
    kind, result, paths = analysed
    if method not in result["scores"]:
        pytest.skip(f"{method} does not apply to a {kind}")
    s = result["scores"][method]
    best = max((p for p in s if not math.isnan(s[p])), key=lambda p: s[p])
    assert best == paths[CRITICAL], (kind, method, s)


def test_duplicate_found_by_correlation_and_spectra(analysed):
    kind, result, paths = analysed
    pair = [paths[DUP_OF], paths[DUPLICATE]]
    assert result["detail"]["layer_correlation"]["most_redundant_pair"] == pair, kind
    assert pair in result["detail"]["spectral_analysis"]["duplicates"], kind


def test_ensemble_ranks_planted_blocks(analysed):
    kind, result, paths = analysed
    assert result["ranking"][0] == paths[CRITICAL], (kind, result["ranking"])
    assert result["ranking"][-1] == paths[IDENTITY], (kind, result["ranking"])


def test_costs_reported(analysed):
    _, result, _ = analysed
    for name in result["methods"]:
        c = result["cost"][name]
        assert c["forward_equivalents"] >= 0 and c["declared"] >= 0
    assert result["total_cost"]["forward_equivalents"] > 0
    # shared methods ride on one forward: declared one pass each, interventions one per block
    assert result["cost"]["block_influence"]["declared"] == 1.0
    assert result["cost"]["layer_ablation"]["declared"] == len(result["droppable"])
