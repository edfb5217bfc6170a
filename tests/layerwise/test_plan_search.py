"""The plan search from the CLI: a reachable bound drops the near-identity blocks, an
impossible one exits 2 naming the best plan and the miss."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import FIXTURES, ROOT
from tests.fixtures.models import residual_mlp

SPEC = f"{FIXTURES}:residual_mlp"


def _compile(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerwise", "compile", SPEC, "--db", "none",
                           *args], capture_output=True, text=True, cwd=ROOT, check=False,
                          timeout=900)


def test_reachable_bound_drops_identity_like_blocks(tmp_path, mlp_data):
    out = tmp_path / "b"
    proc = _compile("--data", str(mlp_data), "--max-drop", "2%", "--search-budget", "10m",
                    "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    s = m["search"]
    chosen = s["chosen"]
    # blocks 1, 3, 5 have branches scaled by 0.01-0.03: they are the ones to go
    assert set(chosen["drop"]) == {"blocks.1", "blocks.3", "blocks.5"}
    assert set(s["drop_order"][:3]) == {"blocks.1", "blocks.3", "blocks.5"}
    assert chosen["quality_drop"] <= 0.02
    model = residual_mlp()[0]
    block = sum(p.numel() for p in model.blocks[0].parameters())
    dropped = sum(p.numel() for p in model.parameters()) - 3 * block
    # pruning is tried after the depth; where a ratio fits the bound, it shrinks what is left
    pruned = [p for p in m["plan"]["passes"] if p["name"] == "prune"]
    if chosen["prune"] is None:
        assert not pruned and m["sizes"]["params"] == dropped
    else:
        assert pruned[0]["params"] == [dropped, m["sizes"]["params"]]
        assert pruned[0]["ratio"] == chosen["prune"] and m["sizes"]["params"] < dropped
    assert [b["path"] for b in m["layers"]["blocks"]] == ["blocks.0", "blocks.2", "blocks.4"]
    assert s["pareto"] and all(c["latency_ms"] for c in s["pareto"])
    assert (out / "report.html").read_text().count("<svg") == 1
    assert m["verification"]["passed"]


def test_default_budget_measures_the_plain_compile_first(tmp_path, mlp_data):
    """Without --search-budget a plain int8 compile is measured first (and is a candidate);
    the search stops in time for the whole compile to end within 3x that compile."""
    out = tmp_path / "b"
    proc = _compile("--data", str(mlp_data), "--max-drop", "2%", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "manifest.json").read_text())["search"]
    assert s["budget_basis"].startswith("default: the compile within 3x a plain int8")
    plain = [c for c in s["candidates"] if not c["drop"] and c["precision"] == "int8"
             and not c["keep_fp32"] and c["prune"] is None]
    assert len(plain) == 1 and plain[0]["latency_ms"] > 0
    assert s["budget_s"] > 0 and s["wall_s"] >= s["seconds"]


def test_an_explicit_budget_replaces_the_default(tmp_path, mlp_data):
    out = tmp_path / "b"
    proc = _compile("--data", str(mlp_data), "--max-drop", "2%", "--search-budget", "1s",
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "manifest.json").read_text())["search"]
    assert s["budget_basis"] == "--search-budget" and s["budget_s"] == 1
    assert any("search budget of 1 s spent" in n for n in s["notes"])
    # the depth found before the budget ran out stands: at most the three near-identity
    # blocks, each within the bound
    assert set(s["chosen"]["drop"]) <= {"blocks.1", "blocks.3", "blocks.5"}


def test_impossible_bound_exits_2(tmp_path, mlp_data):
    out = tmp_path / "b"
    proc = _compile("--data", str(mlp_data), "--max-drop", "0%", "--max-latency-ms", "0.000001",
                    "--out", str(out))
    assert proc.returncode == 2, proc.stderr[-3000:]
    line, = [ln for ln in proc.stderr.splitlines() if ln.startswith("layerwise:")]
    assert "no plan meets the bounds" in line and "latency" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_search_measures_latency_on_the_agent(tmp_path, mlp_data):
    pytest.importorskip("uvicorn", reason="the agent extra is not installed")
    import secrets

    from tests.fixtures.agent import Agent

    token = tmp_path / "token"
    token.write_text(secrets.token_urlsafe(32))
    agent = Agent(tmp_path / "work", token, tmp_path)
    try:
        out = tmp_path / "b"
        proc = _compile("--data", str(mlp_data), "--max-drop", "2%", "--out", str(out),
                        "--remote", agent.url, "--token-file", str(token), "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        s = json.loads((out / "manifest.json").read_text())["search"]
        measured = [c for c in s["candidates"] if c["latency_ms"] is not None]
        assert measured and all(c["latency_measured_on"].startswith(f"agent {agent.url}")
                                for c in measured)
        assert s["chosen"]["latency_measured_on"].startswith(f"agent {agent.url}")
        # a wrong token is refused before any work, with one line and exit 2
        bad = tmp_path / "bad"
        bad.write_text(secrets.token_urlsafe(32))
        bad.chmod(0o600)
        proc = _compile("--data", str(mlp_data), "--max-drop", "2%", "--out", str(tmp_path / "c"),
                        "--remote", agent.url, "--token-file", str(bad))
        assert proc.returncode == 2 and not (tmp_path / "c").exists()
        assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("layerwise:")]) == 1
    finally:
        agent.stop()


def test_drop_and_heal_from_the_cli(tmp_path, mlp_data):
    out = tmp_path / "b"
    proc = _compile("--data", str(mlp_data), "--drop", "blocks.0,blocks.2", "--heal-steps", "120",
                    "--heal-lr", "1e-3", "--heal-budget", "5m", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    dropped, healed = [p for p in m["plan"]["passes"] if p["name"] in ("drop_layers", "heal")]
    assert dropped["dropped"] == ["blocks.0", "blocks.2"] and healed["steps"] == 120
    # the four kept blocks' outputs matched to the original's; 2 of 12 batches held out
    assert healed["matched_blocks"] == 4 and healed["hidden_weight"] == 1.0
    assert healed["examples"] == 80 and healed["held_examples"] == 16
    assert healed["curve"][-1]["step"] == 120 and 0 < healed["kept_step"] <= 120
    assert healed["quality_after"] > healed["quality_before"], healed
    assert [b["path"] for b in m["layers"]["blocks"]] == ["blocks.1", "blocks.3", "blocks.4",
                                                         "blocks.5"]
    assert m["verification"]["passed"]
    # healing without a smaller model is refused before any work
    proc = _compile("--data", str(mlp_data), "--heal-steps", "10", "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "--heal-steps heals a model made smaller" in proc.stderr
    proc = _compile("--data", str(mlp_data), "--drop", "blocks.0", "--heal-steps", "10",
                    "--heal-budget", "2x", "--out", str(tmp_path / "c"))
    assert proc.returncode == 2 and "--heal-budget '2x'" in proc.stderr


def test_search_prunes_the_dead_half(tmp_path, mlp_data):
    out = tmp_path / "b"
    proc = subprocess.run(
        [sys.executable, "-m", "layerwise", "compile", f"{FIXTURES}:half_dead_mlp",
         "--db", "none", "--data", str(mlp_data), "--max-drop", "2%", "--search-budget", "10m",
         "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    s = m["search"]
    # the largest ratio tried is free here: every block keeps exactly its live half
    assert s["prune_ratios_tried"][0] == 0.5 and s["chosen"]["prune"] == 0.5
    assert s["chosen"]["quality_drop"] <= 0.02
    pruned = next(p for p in m["plan"]["passes"] if p["name"] == "prune")
    assert pruned["params"][1] < pruned["params"][0]
    assert m["verification"]["passed"]


def test_search_predicts_latency_for_a_device_not_at_hand(tmp_path, mlp_data):
    out = tmp_path / "b"
    proc = _compile("--data", str(mlp_data), "--max-drop", "2%", "--device", "rpi5", "--target",
                    "onnx", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["device"] == "rpi5" and m["target"] == "onnx"
    measured = [c for c in m["search"]["candidates"] if c["latency_ms"] is not None]
    assert measured and all(c["latency_measured_on"].startswith("predicted for rpi5")
                            for c in measured)
    # the device's rules apply before any work: Coral runs full-integer models only
    proc = _compile("--data", str(mlp_data), "--device", "coral-edgetpu", "--out",
                    str(tmp_path / "c"))
    assert proc.returncode == 2 and "int8" in proc.stderr and not (tmp_path / "c").exists()


def test_search_tries_dynamic_int8_on_a_transformer(tmp_path, hf_folders):
    from layerwise.text import stdlib_sentences

    text = tmp_path / "s.txt"
    text.write_text("\n".join(stdlib_sentences(32)))
    out = tmp_path / "b"
    proc = subprocess.run(
        [sys.executable, "-m", "layerwise", "compile", f"hf:{hf_folders['bert']}", "--db", "none",
         "--data", str(text), "--max-drop", "5%", "--search-budget", "10m", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "manifest.json").read_text())["search"]
    measured = {c["precision"] for c in s["candidates"] if c["latency_ms"] is not None}
    assert {"fp32", "int8", "int8-dynamic"} <= measured


def test_search_heals_its_candidates(tmp_path, mlp_data):
    """With --heal-steps every shrunk candidate is healed (from one set of teacher outputs)
    before it is judged; the chosen plan carries the heal record."""
    out = tmp_path / "b"
    proc = _compile("--data", str(mlp_data), "--max-drop", "2%", "--search-budget", "10m",
                    "--heal-steps", "5",
                    "--heal-lr", "1e-4", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["search"]["chosen"]["drop"]
    heal = next(p for p in m["plan"]["passes"] if p["name"] == "heal")
    assert heal["steps"] == 5 and heal["quality_after"] is not None
