"""Runtime: profile figures, and the runtime room works with torch impossible to import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from layerwise.runtime import profile
from tests.conftest import FIXTURES, ROOT
from tests.fixtures import BLOCK_TORCH_PRELUDE


def test_profile_figures(bundles):
    path, _ = bundles(f"{FIXTURES}:lstm_classifier")
    r = profile(path, runs=20, warmup=2, per_op=True)
    lat = r["latency_ms"]
    assert r["runs"] == 20 and r["batch"] == 1
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert r["throughput_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["threads"] >= 1
    assert r["ops"] and abs(sum(o["share"] for o in r["ops"]) - 1) < 1e-6
    assert profile(path, runs=3, warmup=0, batch=4)["batch"] == 4


BLOCK_TORCH = BLOCK_TORCH_PRELUDE + """
import json
import layerwise.runtime as rt
r = rt.profile(sys.argv[1], runs=5, warmup=1)
assert "torch" not in sys.modules
print(json.dumps(r["latency_ms"]))
"""


def test_runtime_without_torch(bundles):
    path, _ = bundles(f"{FIXTURES}:lstm_classifier")
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(path)], capture_output=True,
                          check=False, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["p50"] > 0


def test_cli_profile_json(bundles):
    path, _ = bundles(f"{FIXTURES}:lstm_classifier")
    proc = subprocess.run([sys.executable, "-m", "layerwise", "profile", str(path), "--json",
                           "--runs", "5"], capture_output=True, check=False, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out["latency_ms"]) >= {"p50", "p90", "p99", "mean"} and out["runs"] == 5


def test_cli_run_npz(bundles, tmp_path):
    import numpy as np

    from layerwise.runtime import open_bundle

    path, manifest = bundles(f"{FIXTURES}:lstm_classifier")
    feeds = open_bundle(path).example_inputs()
    np.savez(tmp_path / "x.npz", **feeds)
    proc = subprocess.run([sys.executable, "-m", "layerwise", "run", str(path), "--input",
                           str(tmp_path / "x.npz"), "--output", str(tmp_path / "y.npz")],
                          capture_output=True, check=False, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "y.npz") as z:
        assert list(z.files) == [o["name"] for o in manifest["outputs"]]
        assert z[z.files[0]].shape == (2, 5)
    np.savez(tmp_path / "bad.npz", tokens=np.zeros((2, 3, 4), np.int64))
    proc = subprocess.run([sys.executable, "-m", "layerwise", "run", str(path), "--input",
                           str(tmp_path / "bad.npz"), "--output", str(tmp_path / "z.npz")],
                          capture_output=True, check=False, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "expects" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "z.npz").exists()


def test_power_modes_reach_the_runtime(bundles):
    from layerwise.base.errors import TargetError
    from layerwise.runtime import open_bundle, open_runner

    path, _ = bundles(f"{FIXTURES}:lstm_classifier")
    b = open_bundle(path)
    spin = "session.intra_op.allow_spinning"
    for mode, expected in (("efficiency", "0"), ("performance", "1")):
        runner = open_runner(b.target, b.model_path, power_mode=mode)
        assert runner.session.get_session_options().get_session_config_entry(spin) == expected
    r = profile(path, runs=3, warmup=0, power_mode="efficiency")
    assert r["power_mode"] == "efficiency" and "cpu_governor" in r
    with pytest.raises(TargetError, match="unknown --power-mode"):
        open_runner(b.target, b.model_path, power_mode="turbo")
    with pytest.raises(TargetError, match="no power-mode setting"):
        open_runner("tflite", b.model_path, power_mode="efficiency")


def test_openvino_power_mode_sets_the_plugin(tmp_path):
    pytest.importorskip("openvino")
    from layerwise import api
    from layerwise.runtime import open_bundle, open_runner

    out = tmp_path / "ov"
    api.compile(f"{FIXTURES}:residual_mlp", api.CompileOptions(target="openvino", out=str(out),
                                                                db="none"))
    b = open_bundle(out)
    runner = open_runner(b.target, b.model_path, power_mode="performance")
    assert str(runner.compiled.get_property("PERFORMANCE_HINT")).endswith("LATENCY")
    assert runner.compiled.get_property("ENABLE_CPU_PINNING") is True
