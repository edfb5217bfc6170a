"""The hub's state and rules shared by its REST API (api_routes.py) and dashboard (pages.py).

Every request but the OpenAPI schema and the login page needs a user's token: `Authorization:
Bearer TOKEN`, or the dashboard's cookie set at /login. Viewers read; engineers also submit
jobs, upload files and cancel jobs; admins also manage users and the device fleet and read the
audit log. Every state-changing request (POST, DELETE), refused ones included, appends one
line to the audit log: who, what, when, the outcome. Errors are `{"error": one line}` with a
4xx status; an internal error is a 500 with one line and no traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerwise.hub.jobspec import Hub, RequestError, plan_job
from layerwise.hub.store import FINAL, ROLES, Store

API = "/api/v1"
COOKIE = "layerwise_token"
RANK = {role: i for i, role in enumerate(ROLES)}


@dataclass(frozen=True)
class HubConfig:
    """What one hub serves with."""

    data_dir: Path
    models_dir: Path | None = None
    max_upload_bytes: int = 256 << 20
    slots: int = 1  # jobs run at once
    max_body_bytes: int = 1 << 20  # a JSON request body


class Ctx:
    """The hub's state shared by the API and the pages."""

    def __init__(self, cfg: HubConfig) -> None:
        self.cfg = cfg
        self.store = Store(cfg.data_dir / "hub.db")
        self.hub = Hub(cfg.data_dir, cfg.models_dir, self.store)
        self.runner = None  # layerwise.hub.runner.Runner once serving

    def user(self, request) -> dict:
        """The caller, from the bearer token or the dashboard's cookie; 401 otherwise."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        token = token or request.cookies.get(COOKIE, "")
        if not token:
            raise RequestError(401, "no token: send `Authorization: Bearer TOKEN` (an admin "
                               "creates users with `layerwise users add`)")
        user = self.store.user_for(token)
        if user is None:
            raise RequestError(401, "unknown or disabled token")
        return user

    def need(self, request, role: str) -> dict:
        """The caller if their role is at least ROLE; 403 otherwise."""
        user = self.user(request)
        request.state.user = user
        if RANK[user["role"]] < RANK[role]:
            raise RequestError(403, f"{user['name']} is a {user['role']}; this needs the "
                               f"{role} role")
        return user

    async def audited(self, request, action: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run FN; append who, what, when and the outcome to the audit log, whatever it is."""
        status, detail = 500, None
        try:
            result = await fn()
            status = getattr(result, "status_code", 200)
            return result
        except RequestError as e:
            status, detail = e.status, str(e)
            raise
        except Exception as e:
            status, detail = 500, f"{type(e).__name__}: {line(e)}"
            raise
        finally:
            user = getattr(request.state, "user", None)
            self.store.audit(user["name"] if user else None, request.method, request.url.path,
                             action, status=status, detail=detail)

    # actions shared by the API and the pages --------------------------------------------
    def submit(self, user: dict, body: Any) -> dict:
        planned = plan_job(body, self.hub)
        job_id = self.store.add_job(planned.kind, planned.spec, planned.request, planned.argv,
                                    user=user["name"], agent=planned.agent)
        if self.runner is not None:
            self.runner.submitted()
        return self.store.job(job_id)

    def job(self, job_id: str | int) -> dict:
        job = self.store.job(int(job_id)) if str(job_id).isdigit() else None
        if job is None:
            raise RequestError(404, f"no job {job_id}")
        return job

    def cancel(self, job_id: str) -> dict:
        job = self.job(job_id)
        if job["state"] in FINAL or self.runner is None or not self.runner.cancel(job["id"]):
            raise RequestError(409, f"job {job['id']} already ended ({job['state']})")
        return self.store.job(job["id"])

    def add_user(self, body: Any) -> dict:
        body = _object(body, ("name", "role"))
        try:
            token = self.store.add_user(str(body.get("name", "")), str(body.get("role", "")))
        except Exception as e:
            raise RequestError(400, line(e)) from None
        return {"name": body["name"], "role": body["role"], "token": token}

    def add_device(self, user: dict, body: Any) -> dict:
        """Register an agent by URL and token: it must answer /v1/info with that token."""
        from layerwise.runtime.remote import agent_info

        body = _object(body, ("name", "url", "token"))
        name, url, token = (str(body.get(k) or "") for k in ("name", "url", "token"))
        if not re.fullmatch(r"[\w.-]{1,64}", name):
            raise RequestError(400, "a device name is 1-64 letters, digits, '-', '_' or '.'")
        if not re.fullmatch(r"https?://[\w.\-\[\]:]+/?", url) or not token:
            raise RequestError(400, "give the agent's url (http://HOST:PORT) and its token")
        if self.store.device(name) is not None:
            raise RequestError(409, f"device {name!r} exists already")
        token_file = self.hub.agent_token_file(name)
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        try:
            info = agent_info(url, str(token_file), timeout=10)
        except Exception as e:
            token_file.unlink(missing_ok=True)
            raise RequestError(400, f"the agent did not answer: {line(e)}") from None
        self.store.add_device(name, url.rstrip("/"), user["name"], info)
        return self.store.device(name)

    def devices(self, live: bool = True) -> list[dict]:
        """The fleet; with `live`, each agent asked for its state now (2 s each)."""
        from layerwise.runtime.remote import agent_info

        out = []
        for known in self.store.devices():
            dev = known
            if live:
                try:
                    info, error = agent_info(dev["url"], str(self.hub.agent_token_file(
                        dev["name"])), timeout=2), None
                except Exception as e:  # noqa: BLE001 - an unreachable agent is a state
                    info, error = None, line(e)
                self.store.seen_device(dev["name"], info, error)
                dev = self.store.device(dev["name"])
                dev["state"] = "online" if error is None else "offline"
            out.append(dev)
        return out

    def job_file(self, job_id: str, rel: str) -> Path:
        """A file of a job's folder; 404 for anything outside it."""
        root = self.hub.job_dir(self.job(job_id)["id"]).resolve()
        path = (root / rel).resolve()
        if root not in path.parents or not path.is_file():
            raise RequestError(404, f"job {job_id} has no file {rel!r}")
        return path


def _object(body: Any, keys: tuple[str, ...]) -> dict:
    if not isinstance(body, dict):
        raise RequestError(400, f"the body must be a JSON object with {', '.join(keys)}")
    extra = set(body) - set(keys)
    if extra:
        raise RequestError(400, f"unknown field {sorted(extra)[0]!r}; give {', '.join(keys)}")
    return body


def line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:500]


async def read_json(request, limit: int) -> Any:
    """The request's JSON body; 413 past LIMIT bytes, 400 when it is not JSON."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"request body over {limit} bytes")
    try:
        return json.loads(body or b"null")
    except ValueError as e:
        raise RequestError(400, f"malformed JSON: {e}") from None


def same_origin(request) -> None:
    """Refuse a cookie-authenticated form post sent from another site (CSRF): the cookie is
    SameSite=Strict, and the browser's Origin must be this hub's."""
    if request.headers.get("authorization"):
        return
    origin = request.headers.get("origin")
    if origin and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
        raise RequestError(403, "cross-site request refused")
