"""The runtime-only install: `pip install .[onnxruntime]` into a fresh venv runs and profiles
bundles with no torch, and compile-side commands say which extra to install."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import FIXTURES, ROOT


@pytest.mark.slow
def test_runtime_only_install(tmp_path, bundles, lm_bundle):
    path, _ = bundles(f"{FIXTURES}:lstm_classifier")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_dir = venv / "bin"
    proc = subprocess.run(
        [bin_dir / "pip", "install", "-q", "--disable-pip-version-check",
         "-C", f"build-dir={tmp_path / 'build'}", f"{ROOT}[onnxruntime]"],
        capture_output=True, text=True, timeout=1200, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    no_torch = subprocess.run([bin_dir / "python", "-c", "import torch"], capture_output=True,
                              text=True, check=False, timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    prof = subprocess.run([bin_dir / "layerwise", "profile", str(path), "--json", "--runs", "5",
                           "--db", str(tmp_path / "runs.db")], capture_output=True, text=True,
                          check=False, timeout=300, cwd=tmp_path, env=env)
    assert prof.returncode == 0, prof.stderr[-3000:]
    assert json.loads(prof.stdout)["latency_ms"]["p50"] > 0
    # a text-generation bundle generates torch-free (tokenizers + onnxruntime), streaming
    gen = subprocess.run([bin_dir / "layerwise", "generate", str(lm_bundle), "--prompt",
                          "This License", "--max-new-tokens", "12"], capture_output=True,
                         text=True, check=False, timeout=300, cwd=tmp_path, env=env)
    assert gen.returncode == 0 and len(gen.stdout.strip()) > 5, gen.stderr[-3000:]
    with_torch = subprocess.run([sys.executable, "-m", "layerwise", "generate", str(lm_bundle),
                                 "--prompt", "This License", "--max-new-tokens", "12"],
                                capture_output=True, text=True, check=False, timeout=300)
    assert gen.stdout == with_torch.stdout
    comp = subprocess.run([bin_dir / "layerwise", "compile", "timm:resnet18", "--out",
                           str(tmp_path / "x")], capture_output=True, text=True, check=False,
                          timeout=300, cwd=tmp_path, env=env)
    assert comp.returncode == 2 and "pip install 'layerwise[compile]'" in comp.stderr
    assert "Traceback" not in comp.stderr and not (tmp_path / "x").exists()
