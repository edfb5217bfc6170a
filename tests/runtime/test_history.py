"""Results history: records from compile/profile, filters, leaderboard, concurrent writers,
and databases that cannot be used (read-only, garbage, corrupt, a directory, no folder)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerwise import api
from layerwise.runtime import history
from tests.conftest import FIXTURES, ROOT
from tests.layerwise.test_cli_errors import assert_user_error

# each way a results database can be unusable, with what the message says about it
BROKEN = {"read-only": "is read-only", "garbage": "is not a SQLite database",
          "malformed": "is corrupt", "directory": "is a directory",
          "no-folder": "cannot create the folder"}

WRITER = """
import sys
from layerwise.runtime.history import record
for i in range(int(sys.argv[2])):
    record("profile", {"spec": f"w{sys.argv[3]}", "target": "onnx",
                       "latency_ms": {"p50": float(i)}}, sys.argv[1])
"""


def test_four_concurrent_writers_lose_nothing(tmp_path):
    db = tmp_path / "runs.db"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), "50", str(w)], cwd=ROOT)
             for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    rows = history.query(db, limit=1000)
    assert len(rows) == 200
    assert sorted({r["model"] for r in rows}) == ["w0", "w1", "w2", "w3"]
    con = history.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def _record_at_once(path, barrier, results):
    barrier.wait()
    try:
        history.record("profile", {"spec": "x", "target": "onnx", "latency_ms": {"p50": 1.0}},
                       path)
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - the test reports what a writer raised
        results.put(str(e))


def test_writers_creating_the_database_at_once_all_succeed(tmp_path):
    """Eight processes open a database that does not exist yet at the same instant: switching
    it to WAL answers "locked" to some at once (seen: 9 of 240 writers failed before)."""
    ctx = multiprocessing.get_context("fork")
    for i in range(6):
        path = tmp_path / f"runs{i}.db"
        barrier, results = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_record_at_once, args=(path, barrier, results))
                 for _ in range(8)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=120)
        assert outcomes == ["ok"] * 8, outcomes
        assert len(history.query(path, limit=100)) == 8


def test_compile_and_profile_are_recorded(tmp_path):
    db = str(tmp_path / "runs.db")
    out = tmp_path / "b"
    spec = f"{FIXTURES}:gcn"
    manifest = api.compile(spec, api.CompileOptions(out=str(out), db=db))
    prof = api.profile(str(out), api.ProfileOptions(runs=5, warmup=1, db=db))
    assert manifest["run_id"] == 1 and prof["run_id"] == 2
    compiled, = history.query(db, kind="compile")
    assert compiled["model"] == spec and compiled["rel_err"] == manifest["verification"]["rel_err"]
    profiled, = history.query(db, kind="profile", model=spec)
    assert profiled["p50_ms"] == prof["latency_ms"]["p50"]
    board = history.leaderboard("p50", db, target="onnx")
    assert board[0]["model"] == spec and board[0]["runs"] == 1
    proc = subprocess.run([sys.executable, "-m", "layerwise", "leaderboard", "--db", db, "--json"],
                          capture_output=True, text=True, cwd=ROOT, check=False, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["model"] == spec
    api.compile(spec, api.CompileOptions(out=str(tmp_path / "c"), db="none"))
    assert len(history.query(db)) == 2


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` (a file or folder) made unwritable for this process and its children: mode
    bits, or for root, which writes through them, the immutable attribute (skips where
    chattr cannot set it)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True,
                                        check=False).returncode != 0:
        pytest.skip("running as root, where mode bits do not stop writes, and chattr +i is "
                    "unavailable on this file system")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def _filled_db(path: Path, rows: int = 1) -> Path:
    for i in range(rows):
        history.record("profile", {"spec": f"m{i}", "target": "onnx",
                                   "latency_ms": {"p50": 1.0 + i}, "pad": "x" * 2000}, path)
    return path


@contextlib.contextmanager
def broken_db(kind: str, root: Path) -> Iterator[str]:
    """A results database path under `root` that cannot be written, in the way `kind` says."""
    db = root / "runs.db"
    if kind == "read-only":
        _filled_db(db)
        with read_only(db):
            yield str(db)
        return
    if kind == "garbage":
        db.write_bytes(b"not a database, just some bytes\n" * 300)
    elif kind == "malformed":  # a real database whose pages after the first are overwritten
        _filled_db(db, rows=20)
        with open(db, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(4096)
            f.write(bytes(range(256)) * ((size - 4096) // 256))
    elif kind == "directory":
        db.mkdir()
    elif kind == "no-folder":  # its folder would have to be made under a regular file
        (root / "afile").write_text("a file, not a folder")
        db = root / "afile" / "sub" / "runs.db"
    yield str(db)


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_unusable_database_raises_history_error(tmp_path, kind):
    with broken_db(kind, tmp_path) as db:
        with pytest.raises(history.HistoryError) as err:
            history.record("profile", {"spec": "x", "latency_ms": {"p50": 1.0}}, db)
        assert BROKEN[kind] in err.value.reason and "--db" in err.value.advice
        assert str(err.value).count("\n") == 0
        if kind == "read-only":  # still readable: the runs listed, nothing added
            assert [r["model"] for r in history.query(db)] == ["m0"]
        else:
            with pytest.raises(history.HistoryError, match=BROKEN[kind]):
                history.query(db)
            with pytest.raises(history.HistoryError, match=BROKEN[kind]):
                history.analysis_records(db)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True,
                          text=True, cwd=ROOT, check=False, timeout=120)


@pytest.mark.parametrize("kind", sorted(set(BROKEN) - {"read-only"}))
def test_runs_and_leaderboard_refuse_an_unusable_database(tmp_path, kind):
    with broken_db(kind, tmp_path) as db:
        for command in ("runs", "leaderboard"):
            assert_user_error(_cli(command, "--db", db), "results database unusable",
                              BROKEN[kind], "--db")


def test_runs_lists_a_read_only_database(tmp_path):
    with broken_db("read-only", tmp_path) as db:
        proc = _cli("runs", "--db", db, "--json")
        assert proc.returncode == 0, proc.stderr
        assert [r["model"] for r in json.loads(proc.stdout)] == ["m0"]
