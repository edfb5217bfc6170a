"""Output places: compile and analyze never replace what is not theirs (a directory of other
files, a regular file, a symlink), refuse places that cannot be written with one line, and
clean up only the temp dirs that carry their marker and whose process is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from layerwise.base.outdir import MARKER, sweep
from tests.conftest import FIXTURES
from tests.layerwise.test_cli_errors import assert_user_error, run_cli
from tests.runtime.test_history import read_only

GCN = f"{FIXTURES}:gcn"
COMMANDS = ["compile", "analyze"]


def _write(cmd: str, out: Path, *extra: str):
    return run_cli(cmd, GCN, "--out", str(out), "--db", "none", *extra)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_force_leaves_a_dir_of_other_files_alone(tmp_path, cmd):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    (out / "manifest.json").write_text('{"format": "something else"}')
    assert_user_error(_write(cmd, out, "--force"), "already exists and is not",
                      "--force replaces only")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.txt"]
    assert (out / "notes.txt").read_text() == "user data"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_force_leaves_a_regular_file_alone(tmp_path, cmd):
    out = tmp_path / "f"
    out.write_text("user data")
    assert_user_error(_write(cmd, out, "--force"), "is not a directory")
    assert out.read_text() == "user data"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_force_leaves_a_symlink_and_its_target_alone(tmp_path, cmd, bundles):
    bundle, _ = bundles(GCN)
    before = sorted(p.name for p in bundle.iterdir())
    link = tmp_path / "link"
    link.symlink_to(bundle, target_is_directory=True)
    assert_user_error(_write(cmd, link, "--force"), "is a symlink")
    assert link.is_symlink() and sorted(p.name for p in bundle.iterdir()) == before
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert_user_error(_write(cmd, dangling), "is a symlink")
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("cmd", COMMANDS)
def test_out_under_a_regular_file(tmp_path, cmd):
    f = tmp_path / "somefile"
    f.write_text("user data")
    for out in (f / "b", f / "x" / "b"):
        assert_user_error(_write(cmd, out), "cannot write --out", "is a file")
    assert f.read_text() == "user data" and [p.name for p in tmp_path.iterdir()] == ["somefile"]


def test_out_in_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        for out in (ro / "b", ro / "x" / "b"):
            assert_user_error(_write("compile", out), "cannot write --out",
                              "no directory can be created")
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("out", ["/proc/layerwise-out", "/proc/self/layerwise-out/b"])
def test_out_under_proc(out):
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    assert_user_error(_write("compile", Path(out)), "cannot write --out", "/proc")
    assert not Path(out).exists()


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_sweep_removes_only_marked_temp_dirs_of_gone_processes(tmp_path):
    host = socket.gethostname()
    out = tmp_path / "b"

    def temp(name: str, marker: str | None) -> Path:
        d = tmp_path / f".b.tmp-{name}"
        d.mkdir()
        (d / "model.onnx").write_bytes(b"partial")
        if marker is not None:
            (d / MARKER).write_text(marker)
        return d

    dead = temp("dead", f"layerwise-partial {_dead_pid()} {host}\n")
    kept = [
        temp("unmarked", None),
        temp("live", f"layerwise-partial {os.getpid()} {host}\n"),
        temp("other-host", f"layerwise-partial {_dead_pid()} {host}-elsewhere\n"),
        temp("bad-magic", f"something {_dead_pid()} {host}\n"),
        temp("garbage", "\x00\x01 not a marker"),
    ]
    other_out = tmp_path / ".c.tmp-dead"  # another OUT's temp dir
    other_out.mkdir()
    (other_out / MARKER).write_text(f"layerwise-partial {_dead_pid()} {host}\n")
    elsewhere = tmp_path / "elsewhere"  # a marked dir reached through a symlink: not followed
    elsewhere.mkdir()
    (elsewhere / MARKER).write_text(f"layerwise-partial {_dead_pid()} {host}\n")
    link = tmp_path / ".b.tmp-link"
    link.symlink_to(elsewhere, target_is_directory=True)

    assert sweep(out) == [dead]
    assert not dead.exists() and all((d / "model.onnx").exists() for d in kept)
    assert other_out.exists() and link.is_symlink() and (elsewhere / MARKER).is_file()
