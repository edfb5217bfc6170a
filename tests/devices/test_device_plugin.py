"""A device profile from a pip-installed plugin (entry point group layerwise.devices)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json
from layerwise.devices import list_devices, load_device
from layerwise.targets import quant_recipe
p = load_device("demo-board")
print(json.dumps({"listed": "demo-board" in list_devices(), "target": p.target,
                  "int8": p.peak("int8"), "calibration": quant_recipe(p).calibration}))
"""


def test_plugin_device(tmp_path, plugin_env):
    env = plugin_env
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, check=False, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout) == {"listed": True, "target": "tflite", "int8": 120.0,
                                      "calibration": "minmax"}
    # without the plugin the name is unknown, and the error lists the built-in devices
    bare = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          check=False, cwd=tmp_path, timeout=120)
    assert bare.returncode != 0 and "unknown device 'demo-board'" in bare.stderr
