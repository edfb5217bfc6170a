"""Bad input: one line on stderr, exit code 2, no traceback, no partial bundle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, ROOT


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True,
                          check=False, text=True, cwd=cwd, env=env, timeout=600)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("layerwise:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("spec, needles", [
    ("nosuchsource:x", ["unknown SPEC", "timm:NAME"]),
    ("missing_file.py:make", ["does not exist"]),
    ("missing.pt2", ["does not exist"]),
    (f"{FIXTURES}:raises", ["raised RuntimeError", "weights server unreachable"]),
    (f"{FIXTURES}:not_a_model", ["returned int"]),
    (f"{FIXTURES}:no_such_factory", ["no callable"]),
    ("zoo:nothing", ["unknown zoo model", "minilm-l6"]),
    ("timm:not_a_real_net", ["timm has no model"]),
])
def test_bad_spec(tmp_path, spec, needles):
    out = tmp_path / "d"
    proc = run_cli("compile", spec, "--target", "onnx", "--out", str(out))
    assert_user_error(proc, *needles)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_untraceable_model_names_the_line(tmp_path):
    out = tmp_path / "d"
    proc = run_cli("compile", f"{FIXTURES}:untraceable", "--out", str(out))
    assert_user_error(proc, "torch.export cannot lift", "models.py:", ".item()")
    assert not out.exists()


def test_unknown_target(tmp_path):
    proc = run_cli("compile", f"{FIXTURES}:gcn", "--target", "nope", "--out", str(tmp_path / "d"))
    assert_user_error(proc, "unknown target 'nope'", "onnx")


def test_existing_out_refused_then_forced(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    proc = run_cli("compile", f"{FIXTURES}:gcn", "--out", str(out))
    assert_user_error(proc, "already exists", "--force")
    proc = run_cli("compile", f"{FIXTURES}:gcn", "--out", str(out), "--force")
    assert_user_error(proc, "not a layerwise bundle", "--force replaces only")
    assert (out / "keep.txt").read_text() == "user data"
    (out / "keep.txt").unlink()  # an empty directory may be replaced
    proc = run_cli("compile", f"{FIXTURES}:gcn", "--out", str(out), "--force", "--json")
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_profile_missing_and_corrupt_bundle(tmp_path):
    assert_user_error(run_cli("profile", str(tmp_path / "nope")), "not a layerwise bundle")
    out = tmp_path / "d"
    assert run_cli("compile", f"{FIXTURES}:gcn", "--out", str(out), "--quiet").returncode == 0
    model = out / "model.onnx"
    model.write_bytes(model.read_bytes()[:100])
    assert_user_error(run_cli("profile", str(out)), "model.onnx", "sha256")


@pytest.mark.parametrize("stage", ["exporting", "emitting"])
def test_ctrl_c_leaves_nothing(tmp_path, stage):
    out = tmp_path / "d"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # a suite started in the background (`cmd &`) inherits SIGINT ignored, and so would the
    # child: it gets Python's own handler, as a terminal's Ctrl-C finds it
    main = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
            " sys.argv = ['layerwise'] + sys.argv[1:]; runpy.run_module('layerwise', "
            "run_name='__main__', alter_sys=True)")
    proc = subprocess.Popen([sys.executable, "-c", main, "compile", "timm:resnet18",
                             "--out", str(out)], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 300
    seen = ""
    while time.time() < deadline:
        line = proc.stderr.readline()
        seen += line
        if stage in line or not line:
            break
    assert stage in seen, seen
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 2, seen + rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
