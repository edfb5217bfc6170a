"""Results history: records from compile/profile, filters, leaderboard, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys

from layerwise import api
from layerwise.runtime import history
from tests.conftest import FIXTURES, ROOT

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
