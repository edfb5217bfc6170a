"""`layerwise devices` and `layerwise predict` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import FIXTURES, ROOT


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True,
                          text=True, cwd=ROOT, check=False, timeout=600)


def test_devices_lists_the_profiles():
    proc = _cli("devices", "--json")
    assert proc.returncode == 0, proc.stderr
    names = {d["name"] for d in json.loads(proc.stdout)["devices"]}
    assert {"host", "rpi4", "rpi5", "jetson-orin-nano", "jetson-agx-orin", "i7-1185g7", "n100",
            "coral-edgetpu", "sd8gen2-x3"} <= names


def test_predict_on_a_published_device_and_errors():
    proc = _cli("predict", f"{FIXTURES}:residual_mlp", "--device", "rpi4", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["device"] == "rpi4" and r["total_ms"] > 0 and not r["calibrated"]
    assert "uncalibrated" in r["basis"]
    assert {row["layer"] for row in r["layers"]} >= {"blocks.0", "head"}
    bad = _cli("predict", f"{FIXTURES}:residual_mlp", "--device", "toaster")
    assert bad.returncode == 2 and "rpi4" in bad.stderr and "Traceback" not in bad.stderr
    coral = _cli("predict", f"{FIXTURES}:residual_mlp", "--device", "coral-edgetpu",
                 "--precision", "fp32")
    assert coral.returncode == 2 and "int8" in coral.stderr
