"""`layerwise analyze --distributed` under torchrun (2 processes, gloo on CPU) gives the scores,
ensemble and ranking of the single-process run; rank 0 alone writes and prints."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from layerwise.analysis.distributed import Shard, interleave, merge_ranks, shard
from layerwise.analysis.stats import Mean
from tests.conftest import ROOT

SPEC = f"{ROOT / 'tests' / 'fixtures' / 'distributed_models.py'}:tiny_classifier"
# every method but meta_learning (it needs a recorded history): static, shared (k-NN mutual
# information, CKA, attention with padding masks, parameter gradients) and intervention
# (ablation, truncated Shapley over a 64-sample prefix, activation patching, conductance)
METHODS = ("block_influence,layer_ablation,shap_analysis,gradient_based,fisher_information,"
           "layer_correlation,mutual_information,causal_analysis,layer_conductance,"
           "attention_analysis,neuron_activation,gradient_flow,information_bottleneck,"
           "uncertainty_quantification,angular_distance,spectral_analysis,topology_analysis")
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    # torchrun runs each worker on one thread; the reference run does too, so the comparison
    # sees the reductions and not BLAS threading (which moves float32 results by ~1e-7)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


def _analyze(prefix: list[str], data, out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, "-m", "layerwise", "analyze", SPEC, "--data", str(data), "--batch-size", "8",
         "--methods", METHODS, "--out", str(out), "--db", "none", "--json", *extra],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=600, check=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.fixtures.distributed_models import write_data

    tmp = tmp_path_factory.mktemp("distributed")
    data = tmp / "data.npz"
    write_data(data, n=70)  # 9 batches of 8 (the last of 6): rank 0 gets 5, rank 1 gets 4
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2"]
    par = _analyze(torchrun, data, tmp / "par", "--distributed")
    one = _analyze([sys.executable], data, tmp / "one")
    return tmp, par, one


def test_distributed_scores_equal_single_process(runs):
    tmp, par, one = runs
    assert par.returncode == 0, par.stderr[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]
    a = json.loads((tmp / "one" / "importance.json").read_text())
    b = json.loads((tmp / "par" / "importance.json").read_text())
    assert b["processes"] == 2 and "processes" not in a
    assert b["samples"] == a["samples"] == 70
    assert b["methods"] == a["methods"] and len(a["methods"]) == len(METHODS.split(","))
    assert b["skipped"] == a["skipped"] == {}
    for m, scores in a["scores"].items():
        scale = max((abs(v) for v in scores.values() if not math.isnan(v)), default=1.0)
        for p, v in scores.items():
            w = b["scores"][m][p]
            assert (math.isnan(v) and math.isnan(w)) or w == pytest.approx(
                v, rel=1e-4, abs=1e-9 * scale), (m, p, v, w)
    for p, v in a["ensemble"].items():
        assert b["ensemble"][p] == pytest.approx(v, rel=1e-4, abs=1e-9)
    assert b["ranking"] == a["ranking"]
    # data-wide figures: the k-NN estimator saw every sample, the metrics every output
    assert b["detail"]["mutual_information"]["samples"] == 70
    for k, v in a["metrics"].items():
        assert b["metrics"][k] == pytest.approx(v, rel=1e-6)


def test_only_rank_zero_writes_and_prints(runs):
    tmp, par, _ = runs
    assert par.returncode == 0, par.stderr[-3000:]
    json.loads(par.stdout)  # exactly one JSON document: rank 1 printed nothing
    assert not [ln for ln in par.stderr.splitlines() if ln.startswith("layerwise:")]
    assert sorted(f.name for f in (tmp / "par").iterdir()) == ["importance.json", "report.html"]
    assert not [f for f in tmp.iterdir() if ".tmp-" in f.name]


def test_distributed_without_torchrun_is_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "layerwise", "analyze", SPEC, "--out", str(tmp_path / "o"),
         "--methods", "spectral_analysis", "--db", "none", "--distributed"],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("layerwise: error:") and "torchrun" in lines[0]
    assert not (tmp_path / "o").exists()


def test_shard_and_merge_keep_batch_order():
    assert shard(list(range(7)), 0, 2) == [0, 2, 4, 6]
    assert shard(list(range(7)), 1, 2) == [1, 3, 5]
    assert interleave([[0, 2, 4, 6], [1, 3, 5]]) == list(range(7))
    s = Shard.of([8] * 8 + [6], 1, 2)
    assert s.indices == (1, 3, 5, 7) and s.cutoff(64) == 8 and s.cutoff(None) == 9
    assert s.cutoff(65) == 9 and s.cutoff(1) == 1
    m0, m1 = Mean(), Mean()
    m0.update(2.0)
    m1.update(4.0)
    merged = merge_ranks([{"y": [0, 2], "m": {"a": m0}}, {"y": [1], "m": {"a": m1}}])
    assert merged["y"] == [0, 1, 2] and merged["m"]["a"].value == 3.0
    with pytest.raises(Exception, match="at least 3 batches"):
        Shard.of([8, 8], 0, 3)


def test_leaving_the_group_stops_its_threads(tmp_path):
    """destroy_process_group must free the gloo group even after torch.export ran; a group kept
    alive keeps worker threads that abort the process at exit (seen: SIGABRT in 5 of 28 runs)."""
    script = ROOT / "tests" / "fixtures" / "distributed_teardown.py"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), str(tmp_path)], capture_output=True, text=True, cwd=ROOT, env=_env(),
        timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {f.name: f.read_text().split() for f in sorted(tmp_path.glob("rank*.txt"))}
    assert sorted(counts) == ["rank0.txt", "rank1.txt"], proc.stdout
    for before, after in counts.values():
        assert after == before, counts
