"""A plugin package, installed with pip, adds a method, a pass and a target to the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import FIXTURES, ROOT


def test_plugin_entry_points(tmp_path, plugin_env):
    env = plugin_env

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "layerwise", *args, "--json"], env=env,
                              capture_output=True, text=True, check=False, cwd=ROOT, timeout=600)

    spec = f"{FIXTURES}:residual_mlp"
    ana = cli("analyze", spec, "--methods", "param_count,spectral_analysis", "--out",
              str(tmp_path / "a"), "--db", "none")
    assert ana.returncode == 0, ana.stderr[-2000:]
    scores = json.loads(ana.stdout)["scores"]["param_count"]
    assert set(scores) == {f"blocks.{i}" for i in range(6)} and len(set(scores.values())) == 1
    comp = cli("compile", spec, "--target", "onnx_demo", "--passes", "tag_model", "--out",
               str(tmp_path / "b"), "--db", "none")
    assert comp.returncode == 0, comp.stderr[-2000:]
    m = json.loads(comp.stdout)
    assert m["target"] == "onnx_demo" and m["verification"]["passed"]
    assert {"name": "tag_model", "by": "plugin"} in m["plan"]["passes"]
    # without the plugin on the path, the names are unknown: one line, exit 2
    bad = subprocess.run([sys.executable, "-m", "layerwise", "compile", spec, "--target",
                          "onnx_demo", "--out", str(tmp_path / "c")], capture_output=True,
                         text=True, check=False, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and "unknown target 'onnx_demo'" in bad.stderr
