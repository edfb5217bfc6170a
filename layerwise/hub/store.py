"""The hub's own database (SQLite, stdlib only): users with hashed tokens, jobs, fleet devices,
uploads, and the append-only audit log.

Tokens are random (32 bytes from `secrets`), so one SHA-256 is enough to keep them unusable at
rest; only the hash is stored and compared in constant time. The audit table refuses UPDATE
and DELETE through triggers, so no code path (nor a stray SQL statement) can rewrite it.
Each call opens its own short connection (WAL, busy timeout): the server's threads and its
job runner share the file safely.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from layerwise.base.errors import LayerwiseError

ROLES = ("viewer", "engineer", "admin")
STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,              -- compile | analyze | profile
    spec TEXT,                       -- the model (or job:N for a profile)
    request TEXT NOT NULL,           -- JSON: the request as accepted
    argv TEXT NOT NULL,              -- JSON: the command line it runs
    agent TEXT,                      -- fleet device it is dispatched to
    user TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    result TEXT,                     -- JSON: the command's --json output
    pid INTEGER                      -- the running command's process group
);
CREATE TABLE IF NOT EXISTS devices (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    added_by TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL,
    last_info TEXT,                  -- JSON: the agent's /v1/info
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    user TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    user TEXT,                       -- NULL: the caller was not identified
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    action TEXT NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def token_hash(token: str) -> str:
    """SHA-256 of a token, hex (what the users table keeps)."""
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """The hub database at `path` (created with its tables on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._con() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise LayerwiseError(f"cannot use the hub database {self.path} ({e}); pass "
                                 "--data-dir in a writable place") from e

    @contextmanager
    def _con(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        try:
            yield con
        finally:
            con.close()

    # users -------------------------------------------------------------------------------
    def add_user(self, name: str, role: str) -> str:
        """Create user NAME with ROLE; returns the token (shown once, kept hashed)."""
        if role not in ROLES:
            raise LayerwiseError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
            raise LayerwiseError("a user name is 1-64 letters, digits, '-', '_' or '.'")
        token = secrets.token_urlsafe(32)
        with self._con() as con:
            try:
                con.execute("INSERT INTO users VALUES (?, ?, ?, ?, 0)",
                            (name, role, token_hash(token), time.time()))
            except sqlite3.IntegrityError:
                raise LayerwiseError(f"user {name!r} exists already") from None
        return token

    def user_for(self, token: str) -> dict | None:
        """The enabled user whose token this is, else None (compared in constant time)."""
        digest = token_hash(token)
        with self._con() as con:
            row = con.execute("SELECT * FROM users WHERE token_sha256 = ?", (digest,)).fetchone()
        if row is None or row["disabled"] or not hmac.compare_digest(row["token_sha256"],
                                                                    digest):
            return None
        return {"name": row["name"], "role": row["role"]}

    def users(self) -> list[dict]:
        with self._con() as con:
            rows = con.execute("SELECT name, role, created, disabled FROM users "
                               "ORDER BY created").fetchall()
        return [dict(r) | {"disabled": bool(r["disabled"])} for r in rows]

    def disable_user(self, name: str) -> bool:
        with self._con() as con:
            return con.execute("UPDATE users SET disabled = 1 WHERE name = ?",
                               (name,)).rowcount > 0

    def count_users(self) -> int:
        with self._con() as con:
            return con.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    # jobs --------------------------------------------------------------------------------
    def add_job(self, kind: str, spec: str | None, request: dict, argv: list[str], *,
                user: str, agent: str | None = None) -> int:
        with self._con() as con:
            return con.execute(
                "INSERT INTO jobs (kind, spec, request, argv, agent, user, state, created) "
                "VALUES (?, ?, ?, ?, ?, ?, 'queued', ?)",
                (kind, spec, json.dumps(request), json.dumps(argv), agent, user,
                 time.time())).lastrowid

    def job(self, job_id: int) -> dict | None:
        with self._con() as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, limit: int = 100, state: str | None = None,
             agent: str | None = None) -> list[dict]:
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(state)
        if agent:
            where.append("agent = ?")
            args.append(agent)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._con() as con:
            rows = con.execute(f"SELECT * FROM jobs {clause} ORDER BY id DESC LIMIT ?",
                               (*args, limit)).fetchall()
        return [_job(r) for r in rows]

    def next_queued(self) -> dict | None:
        """The oldest queued job, marked running (one transaction, so no job starts twice)."""
        with self._con() as con:
            con.execute("BEGIN IMMEDIATE")
            row = con.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY id "
                              "LIMIT 1").fetchone()
            if row is not None:
                con.execute("UPDATE jobs SET state = 'running', started = ? WHERE id = ?",
                            (time.time(), row["id"]))
            con.execute("COMMIT")
        return self.job(row["id"]) if row else None

    def finish_job(self, job_id: int, state: str, result: dict | None = None,
                   error: str | None = None) -> None:
        """Record a job's end, unless it already ended (a cancel wins over a late finish)."""
        with self._con() as con:
            con.execute("UPDATE jobs SET state = ?, finished = ?, result = ?, error = ? "
                        "WHERE id = ? AND state NOT IN ('done', 'failed', 'cancelled')",
                        (state, time.time(), json.dumps(result) if result is not None
                         else None, error, job_id))

    def set_pid(self, job_id: int, pid: int) -> None:
        with self._con() as con:
            con.execute("UPDATE jobs SET pid = ? WHERE id = ?", (pid, job_id))

    def fail_interrupted(self, reason: str) -> list[dict]:
        """Mark every job left running (the server stopped under it) failed with REASON;
        returns those jobs (their `pid` may still run)."""
        with self._con() as con:
            rows = con.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall()
            con.execute("UPDATE jobs SET state = 'failed', finished = ?, error = ? "
                        "WHERE state = 'running'", (time.time(), reason))
        return [_job(r) for r in rows]

    # devices -----------------------------------------------------------------------------
    def add_device(self, name: str, url: str, user: str, info: dict) -> None:
        with self._con() as con:
            try:
                con.execute("INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, NULL)",
                            (name, url, user, time.time(), time.time(), json.dumps(info)))
            except sqlite3.IntegrityError:
                raise LayerwiseError(f"device {name!r} exists already") from None

    def device(self, name: str) -> dict | None:
        with self._con() as con:
            row = con.execute("SELECT * FROM devices WHERE name = ?", (name,)).fetchone()
        return _device(row) if row else None

    def devices(self) -> list[dict]:
        with self._con() as con:
            rows = con.execute("SELECT * FROM devices ORDER BY name").fetchall()
        return [_device(r) for r in rows]

    def seen_device(self, name: str, info: dict | None, error: str | None) -> None:
        with self._con() as con:
            if info is not None:
                con.execute("UPDATE devices SET last_seen = ?, last_info = ?, last_error = NULL"
                            " WHERE name = ?", (time.time(), json.dumps(info), name))
            else:
                con.execute("UPDATE devices SET last_error = ? WHERE name = ?", (error, name))

    def remove_device(self, name: str) -> bool:
        with self._con() as con:
            return con.execute("DELETE FROM devices WHERE name = ?", (name,)).rowcount > 0

    # uploads -----------------------------------------------------------------------------
    def add_upload(self, upload_id: str, name: str, size: int, user: str) -> None:
        with self._con() as con:
            con.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?)",
                        (upload_id, name, size, user, time.time()))

    def upload(self, upload_id: str) -> dict | None:
        with self._con() as con:
            row = con.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return dict(row) if row else None

    # audit -------------------------------------------------------------------------------
    def audit(self, user: str | None, method: str, path: str, action: str, *, status: int,
              detail: str | None = None) -> None:
        """Append one line to the audit log."""
        with self._con() as con:
            con.execute("INSERT INTO audit (time, user, method, path, action, status, detail) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (time.time(), user, method, path, action, status, detail))

    def audit_log(self, limit: int = 200) -> list[dict]:
        with self._con() as con:
            rows = con.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?",
                               (limit,)).fetchall()
        return [dict(r) for r in rows]


def _job(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for k in ("request", "argv", "result"):
        d[k] = json.loads(d[k]) if d[k] else None
    return d


def _device(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["last_info"] = json.loads(d["last_info"]) if d["last_info"] else None
    return d
