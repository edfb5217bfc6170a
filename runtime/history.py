"""Results history: every compile, analyze and profile as one row in SQLite (stdlib only).

WAL mode and `BEGIN IMMEDIATE` with a busy timeout make concurrent writers from several
processes safe: each record is one short transaction, retried while the file is locked.
A database that cannot be opened, read or written raises `HistoryError`, whose reason and
advice the commands print (a warning when recording, an error for `runs`/`leaderboard`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from layerwise.base.errors import LayerwiseError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,            -- compile | analyze | profile
    model TEXT,                    -- the SPEC
    spec_hash TEXT,
    target TEXT,
    device TEXT,
    host TEXT,
    bundle TEXT,
    p50_ms REAL,
    rel_err REAL,
    model_bytes INTEGER,
    plan TEXT,                     -- JSON
    quality TEXT,                  -- JSON
    latency TEXT,                  -- JSON
    sizes TEXT,                    -- JSON
    versions TEXT,                 -- JSON
    payload TEXT                   -- JSON: anything else the command reported
);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind);
CREATE INDEX IF NOT EXISTS runs_model ON runs(model);
"""
METRICS = {"p50": "p50_ms", "rel_err": "rel_err", "size": "model_bytes"}


def default_db() -> Path:
    """$LAYERWISE_DB, else ~/.layerwise/runs.db."""
    return Path(os.environ.get("LAYERWISE_DB") or Path.home() / ".layerwise" / "runs.db")


class HistoryError(LayerwiseError):
    """A results database that cannot be opened, read or written: `reason` says why (with
    the path), `advice` what to do."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(f"results database unusable: {reason}; {advice}")
        self.reason, self.advice = reason, advice


def connect(path: str | Path | None = None) -> sqlite3.Connection:
    """Open (creating if needed) the database at `path`; HistoryError if it is unusable."""
    p = Path(path) if path else default_db()
    if p.is_dir():
        raise HistoryError(f"{p} is a directory", "pass --db FILE")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        above = p.parent
        while not above.exists() and above != above.parent:
            above = above.parent
        why = f"{above} is a file" if above.exists() and not above.is_dir() else e.strerror
        raise HistoryError(f"cannot create the folder of {p} ({why or e})",
                           "pass --db FILE in a writable place") from e
    with _guard(p):
        con = sqlite3.connect(p, timeout=30.0, isolation_level=None)  # 30 s busy timeout
        try:
            # switching a new file to WAL, and creating its tables, race other processes
            # opening it at the same moment; SQLite then answers "locked" at once, without
            # waiting out the busy timeout (it would deadlock), so those steps are retried
            _retry_locked(con, lambda: (con.execute("PRAGMA journal_mode=WAL"),
                                        con.executescript(SCHEMA)))
        except BaseException:
            con.close()
            raise
    con.row_factory = sqlite3.Row
    return con


@contextmanager
def _guard(p: Path) -> Iterator[None]:
    """SQLite's errors on `p` as HistoryError, with what to do about each."""
    try:
        yield
    except sqlite3.Error as e:
        msg = str(e)
        aside = "move it aside or pass --db NEWFILE"
        if "not a database" in msg:
            raise HistoryError(f"{p} is not a SQLite database ({msg})", aside) from e
        if "malformed" in msg or "corrupt" in msg:
            raise HistoryError(f"{p} is corrupt ({msg})", aside) from e
        if "readonly" in msg or "read-only" in msg:
            raise HistoryError(f"{p} is read-only ({msg})",
                               "make it writable or pass --db FILE") from e
        if "locked" in msg or "busy" in msg:
            raise HistoryError(f"{p} stayed locked by another process ({msg})", "retry") from e
        raise HistoryError(f"cannot use {p} ({msg})",
                           "check the file and its folder, or pass --db FILE") from e


def spec_hash(spec: str) -> str:
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def record(kind: str, payload: dict[str, Any], db: str | Path | None = None) -> int:
    """Append one run; returns its id. `payload` is a manifest or a profile result."""
    latency = payload.get("latency_ms")
    verification = payload.get("verification") or {}
    row = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kind": kind,
        "model": payload.get("spec"),
        "spec_hash": spec_hash(payload["spec"]) if payload.get("spec") else None,
        "target": payload.get("target"),
        "device": payload.get("device", "host"),
        "host": platform.node(),
        "bundle": payload.get("bundle"),
        "p50_ms": latency.get("p50") if latency else None,
        "rel_err": verification.get("rel_err"),
        "model_bytes": (payload.get("sizes") or {}).get("model_bytes"),
        "plan": json.dumps(payload.get("plan")),
        "quality": json.dumps({k: payload[k] for k in ("verification", "fidelity", "quality")
                               if k in payload}),
        "latency": json.dumps(latency),
        "sizes": json.dumps(payload.get("sizes")),
        "versions": json.dumps(payload.get("tool_versions") or {"runtime": payload.get("runtime")}),
        "payload": json.dumps(payload, default=str),
    }
    cols = ", ".join(row)
    marks = ", ".join("?" for _ in row)

    def insert(con: sqlite3.Connection) -> int:
        def once() -> int:
            con.execute("BEGIN IMMEDIATE")
            cur = con.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", list(row.values()))
            con.execute("COMMIT")
            return int(cur.lastrowid)

        return _retry_locked(con, once)

    return _use(db, insert)


def _use(db: str | Path | None, work: Callable[[sqlite3.Connection], Any]) -> Any:
    """work(connection) on the database, closed after; SQLite's errors as HistoryError."""
    p = Path(db) if db else default_db()
    con = connect(p)
    try:
        with _guard(p):
            return work(con)
    finally:
        con.close()


def _retry_locked(con: sqlite3.Connection, step, attempts: int = 20):
    """step() retried while SQLite answers "locked" or "busy" (rolling back what it left
    open), with a growing pause; re-raises the last error after `attempts` tries."""
    for attempt in range(attempts):
        try:
            return step()
        except sqlite3.OperationalError as e:
            if con.in_transaction:
                con.execute("ROLLBACK")
            if ("locked" not in str(e) and "busy" not in str(e)) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def query(db: str | Path | None = None, kind: str | None = None, model: str | None = None,
          target: str | None = None, device: str | None = None, limit: int = 50) -> list[dict]:
    """Most recent runs first, filtered by the given columns."""
    where, args = _filters(kind=kind, model=model, target=target, device=device)
    rows = _use(db, lambda con: con.execute(f"SELECT * FROM runs {where} ORDER BY id DESC "
                                            "LIMIT ?", [*args, limit]).fetchall())
    return [_row(r) for r in rows]


def analysis_records(db: str | Path | None = None, limit: int = 500) -> list[dict]:
    """The newest analysis record (block features + measured importance, for meta_learning)
    per model and measured target, from the recorded analyze runs."""
    rows = _use(db, lambda con: con.execute("SELECT payload FROM runs WHERE kind = 'analyze' "
                                            "ORDER BY id DESC LIMIT ?", [limit]).fetchall())
    seen: dict[tuple, dict] = {}
    for r in rows:
        rec = (json.loads(r["payload"]) if r["payload"] else {}).get("history_record")
        if rec and (rec.get("model"), rec.get("target")) not in seen:
            seen[(rec.get("model"), rec.get("target"))] = rec
    return list(seen.values())


def leaderboard(metric: str = "p50", db: str | Path | None = None, device: str | None = None,
                target: str | None = None, limit: int = 20) -> list[dict]:
    """Best (lowest) value of `metric` per (model, target, device), best first."""
    if metric not in METRICS:
        raise LayerwiseError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    col = METRICS[metric]
    where, args = _filters(device=device, target=target)
    where = f"{where} {'AND' if where else 'WHERE'} {col} IS NOT NULL"
    rows = _use(db, lambda con: con.execute(
        f"SELECT model, target, device, MIN({col}) AS best, COUNT(*) AS runs FROM runs "
        f"{where} GROUP BY model, target, device ORDER BY best ASC LIMIT ?",
        [*args, limit]).fetchall())
    return [{"model": r["model"], "target": r["target"], "device": r["device"],
             metric: r["best"], "runs": r["runs"]} for r in rows]


def _filters(**cols: str | None) -> tuple[str, list]:
    parts = [(f"{k} = ?", v) for k, v in cols.items() if v is not None]
    if not parts:
        return "", []
    return "WHERE " + " AND ".join(p for p, _ in parts), [v for _, v in parts]


def _row(r: sqlite3.Row) -> dict:
    d = dict(r)
    for k in ("plan", "quality", "latency", "sizes", "versions", "payload"):
        d[k] = json.loads(d[k]) if d[k] else None
    return d
