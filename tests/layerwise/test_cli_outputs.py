"""What compile, analyze and profile leave behind: their results when the results database
cannot be written, no temp dir after a SIGKILL, and --force replacing only their own output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layerwise.base.outdir import MARKER
from tests.conftest import FIXTURES, ROOT
from tests.layerwise.test_cli_errors import assert_user_error, run_cli
from tests.runtime.test_history import BROKEN, broken_db

GCN = f"{FIXTURES}:gcn"
WARNING = "layerwise: warning: results not recorded in DB: "


def _warned_once(proc: subprocess.CompletedProcess, needle: str) -> None:
    """Exit 0, one warning line naming the reason and what to do, no error."""
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("layerwise:")]
    assert len(lines) == 1 and lines[0].startswith(WARNING), proc.stderr
    assert needle in lines[0] and "--db" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_compile_keeps_its_bundle_when_the_db_cannot_be_written(tmp_path, kind):
    out = tmp_path / "b"
    with broken_db(kind, tmp_path) as db:
        proc = run_cli("compile", GCN, "--out", str(out), "--db", db, "--json")
    _warned_once(proc, BROKEN[kind])
    manifest = json.loads(proc.stdout)
    assert manifest["verification"]["passed"] and manifest["run_id"] is None
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_profile_prints_its_result_when_the_db_cannot_be_written(tmp_path, kind, bundles):
    bundle, _ = bundles(GCN)
    with broken_db(kind, tmp_path) as db:
        proc = run_cli("profile", str(bundle), "--runs", "3", "--warmup", "1", "--db", db,
                       "--json")
    _warned_once(proc, BROKEN[kind])
    result = json.loads(proc.stdout)
    assert result["latency_ms"]["p50"] > 0 and result["run_id"] is None


@pytest.mark.parametrize("kind", ["malformed", "read-only"])
def test_analyze_writes_its_report_when_the_db_cannot_be_written(tmp_path, kind):
    """malformed: the analyses recorded before cannot be read either (one warning still);
    read-only: they can, only the new record fails."""
    out = tmp_path / "a"
    with broken_db(kind, tmp_path) as db:
        proc = run_cli("analyze", GCN, "--out", str(out), "--db", db, "--json")
    _warned_once(proc, BROKEN[kind])
    assert json.loads(proc.stdout)["run_id"] is None
    assert sorted(p.name for p in out.iterdir()) == ["importance.json", "report.html"]


def _temp_dirs(parent: Path, out: str) -> list[Path]:
    return sorted(parent.glob(f".{out}.tmp-*"))


def test_sigkilled_compile_leaves_a_temp_dir_the_next_compile_removes(tmp_path):
    out = tmp_path / "d"
    foreign = tmp_path / ".d.tmp-not-ours"  # same name pattern, no marker: never touched
    foreign.mkdir()
    (foreign / "data.txt").write_text("someone else's")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "layerwise", "compile", "timm:resnet18",
                             "--out", str(out), "--db", "none"], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = ""
    deadline = time.time() + 300
    while time.time() < deadline:  # the temp dir exists once "emitting" is shown
        line = proc.stderr.readline()
        seen += line
        if "emitting" in line or not line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and "emitting" in seen, seen
    left = [d for d in _temp_dirs(tmp_path, "d") if d != foreign]
    assert len(left) == 1 and (left[0] / MARKER).is_file() and not out.exists()

    proc = run_cli("compile", GCN, "--out", str(out), "--db", "none", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert _temp_dirs(tmp_path, "d") == [foreign]
    assert (foreign / "data.txt").read_text() == "someone else's"
    assert (out / "manifest.json").is_file() and not (out / MARKER).exists()


def test_force_replaces_an_empty_dir_then_a_previous_bundle(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    assert_user_error(run_cli("compile", GCN, "--out", str(out)), "already exists", "--force")
    proc = run_cli("compile", GCN, "--out", str(out), "--force", "--db", "none", "--quiet")
    assert proc.returncode == 0, proc.stderr
    (out / "stale.txt").write_text("from the previous bundle")
    proc = run_cli("compile", GCN, "--out", str(out), "--force", "--db", "none", "--quiet")
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["inputs.npz", "manifest.json", "model.onnx"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_force_refuses_a_dir_of_other_files(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    proc = run_cli("compile", GCN, "--out", str(out), "--force")
    assert_user_error(proc, "not a layerwise bundle", "--force replaces only")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "user data"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_analyze_force_replaces_only_an_analyze_output(tmp_path, bundles):
    out = tmp_path / "a"
    stale = tmp_path / ".a.tmp-killed"  # a temp dir of an analyze that was killed
    stale.mkdir()
    (stale / MARKER).write_text(f"layerwise-partial {_dead_pid()} {socket.gethostname()}\n")
    args = ("analyze", GCN, "--db", "none", "--json", "--force", "--out")
    assert run_cli(*args, str(out)).returncode == 0
    assert not stale.exists()
    (out / "importance.json").write_text(json.dumps({"spec": "old", "ranking": [],
                                                     "scores": {}}))
    proc = run_cli(*args, str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "importance.json").read_text())["spec"] == GCN
    bundle, _ = bundles(GCN)  # a bundle is not an analyze output
    assert_user_error(run_cli(*args, str(bundle)), "not an analyze output")
    assert (bundle / "manifest.json").is_file()


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)
