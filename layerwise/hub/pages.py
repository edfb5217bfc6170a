"""The hub's dashboard: server-rendered pages, no script and nothing fetched from elsewhere
(the style is inline, charts are inline SVG).

Sign-in takes a user's token and keeps it in an HttpOnly, SameSite=Strict cookie; forms post
to the same origin only (layerwise.hub.context.same_origin) and go through the same checks,
roles and audit log as the API. A page with a job still queued or running reloads itself.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any

from layerwise.hub.charts import latency_chart
from layerwise.hub.context import API, COOKIE, RANK, Ctx, same_origin
from layerwise.hub.jobspec import RequestError
from layerwise.hub.store import FINAL

STYLE = """body{font:14px system-ui,sans-serif;margin:0;color:#222}
nav{background:#24364b;padding:8px 16px}nav a{color:#fff;margin-right:16px;text-decoration:none}
main{padding:16px 24px}table{border-collapse:collapse}td,th{padding:3px 10px;text-align:left;
border-bottom:1px solid #eee}th{background:#f4f4f4}pre{background:#f7f7f7;padding:8px;
max-height:420px;overflow:auto}.done{color:#1e7d32}.failed,.offline{color:#b3261e}
.running,.queued{color:#8a6d00}.online{color:#1e7d32}form.inline{display:inline}
label{display:inline-block;min-width:110px}fieldset{border:1px solid #ddd;margin:8px 0}"""
TARGETS = ("onnx", "openvino", "tflite", "tvm", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic", "int8-weight", "int4-weight")


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def page(title: str, body: str, user: dict | None, refresh: bool = False):
    from starlette.responses import HTMLResponse

    links = "" if user is None else (
        '<a href="/">Jobs</a><a href="/leaderboard">Leaderboard</a><a href="/devices">'
        'Devices</a>' + ('<a href="/users">Users</a><a href="/audit">Audit</a>'
                         if user["role"] == "admin" else "")
        + f'<span style="color:#ccd;float:right">{e(user["name"])} ({e(user["role"])}) '
        '<form class="inline" method="post" action="/logout"><button>sign out</button>'
        '</form></span>')
    meta = '<meta http-equiv="refresh" content="2">' if refresh else ""
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'>{meta}<title>{e(title)} — "
        f"layerwise hub</title><style>{STYLE}</style></head><body><nav>"
        f"<b style='color:#fff;margin-right:24px'>layerwise hub</b>{links}</nav>"
        f"<main><h1>{e(title)}</h1>{body}</main></body></html>",
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                 "img-src data:; form-action 'self'", "X-Frame-Options": "DENY"})


def refused_page(request, status: int, message: str):
    """A 401 sends the browser to sign in; a 403 says what role is missing."""
    from starlette.responses import RedirectResponse

    if status == 401:
        return RedirectResponse("/login", 303)
    resp = page("Not allowed", f"<p>{e(message)}</p>", None)
    resp.status_code = status
    return resp


def _table(heads: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "<p>none yet</p>"
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>")


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _took(job: dict) -> str:
    if not job["started"]:
        return ""
    return f"{(job['finished'] or time.time()) - job['started']:.0f} s"


def _state(s: str) -> str:
    return f'<span class="{e(s)}">{e(s)}</span>'


def _select(name: str, options: list[str], blank: str | None = None) -> str:
    opts = ([f'<option value="">{e(blank)}</option>'] if blank is not None else []) + [
        f'<option value="{e(o)}">{e(o)}</option>' for o in options]
    return f'<select name="{name}" id="{name}">{"".join(opts)}</select>'


def _submit_form(ctx: Ctx) -> str:
    agents = [d["name"] for d in ctx.store.devices()]
    return (
        '<form method="post" action="/jobs" enctype="multipart/form-data" id="submit">'
        "<fieldset><legend>New job</legend>"
        f'<p><label for="kind">kind</label>{_select("kind", ["compile", "analyze"])}</p>'
        '<p><label for="spec">model</label><input name="spec" id="spec" size="40" '
        'placeholder="timm:resnet18, zoo:mobilenet-v2"> or a .pt2 <input type="file" '
        'name="model_file" accept=".pt2"></p>'
        f'<p><label for="target">target</label>{_select("target", list(TARGETS))} '
        f'<label for="precision">precision</label>{_select("precision", list(PRECISIONS))}'
        '</p><p><label for="max_drop">max drop</label><input name="max_drop" id="max_drop" '
        'size="6" placeholder="1%"> <label>data</label><input type="file" name="data_file">'
        f'</p><p><label for="agent">measure on</label>{_select("agent", agents, "this hub")}'
        '</p><p><label for="options">more options</label><input name="options" '
        'id="options" size="60" placeholder=\'JSON, e.g. {"prune": 0.25}\'></p>'
        '<button type="submit" id="go">Submit</button></fieldset></form>')


def routes(ctx: Ctx) -> list:
    """The dashboard's routes, bound to the hub's state."""
    from starlette.requests import Request
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    from layerwise.hub.api_routes import save_upload

    async def home(request: Request):
        user = ctx.need(request, "viewer")
        jobs = ctx.store.jobs(limit=100)
        rows = [[f'<a href="/jobs/{j["id"]}">{j["id"]}</a>', e(j["kind"]), e(j["spec"]),
                 e((j["request"].get("options") or {}).get("target", "")), _state(j["state"]),
                 e(j["user"]), e(j["agent"] or ""), _when(j["created"]), _took(j)]
                for j in jobs]
        body = (_submit_form(ctx) if RANK[user["role"]] >= RANK["engineer"] else "") + \
            "<h2>Jobs</h2>" + _table(["job", "kind", "model", "target", "state", "user",
                                      "device", "submitted", "took"], rows)
        return page("Jobs", body, user, refresh=any(j["state"] not in FINAL for j in jobs))

    async def submit(request: Request):
        async def go():
            same_origin(request)
            user = ctx.need(request, "engineer")
            form = await request.form(max_part_size=ctx.cfg.max_upload_bytes)
            body = await _job_from_form(ctx, user, form, save_upload)
            return RedirectResponse(f"/jobs/{ctx.submit(user, body)['id']}", 303)
        try:
            return await ctx.audited(request, "submit job (dashboard)", go)
        except RequestError as err:
            if err.status in (401, 403):
                raise
            user = ctx.need(request, "viewer")
            resp = page("Job refused", f"<p class='failed'>{e(err)}</p><p><a href='/'>back"
                        "</a></p>", user)
            resp.status_code = err.status
            return resp

    async def job_page(request: Request):
        user = ctx.need(request, "viewer")
        job = ctx.job(request.path_params["id"])
        return page(f"Job {job['id']}: {job['kind']} {job['spec']}", _job_body(ctx, job, user),
                    user, refresh=job["state"] not in FINAL)

    async def cancel(request: Request):
        async def go():
            same_origin(request)
            ctx.need(request, "engineer")
            ctx.cancel(request.path_params["id"])
            return RedirectResponse(f"/jobs/{request.path_params['id']}", 303)
        return await ctx.audited(request, f"cancel job {request.path_params['id']}", go)

    async def profile(request: Request):
        async def go():
            same_origin(request)
            user = ctx.need(request, "engineer")
            form = await request.form()
            body = {"kind": "profile", "bundle": f"job:{request.path_params['id']}",
                    "options": {"runs": 50}}
            if form.get("agent"):
                body["agent"] = str(form["agent"])
            return RedirectResponse(f"/jobs/{ctx.submit(user, body)['id']}", 303)
        return await ctx.audited(request, "submit job (dashboard)", go)

    return [*_sign_in_routes(ctx),
            Route("/", home, methods=["GET"]),
            Route("/jobs", submit, methods=["POST"]),
            Route("/jobs/{id}", job_page, methods=["GET"]),
            Route("/jobs/{id}/cancel", cancel, methods=["POST"]),
            Route("/jobs/{id}/profile", profile, methods=["POST"]),
            *_admin_routes(ctx)]


def _sign_in_routes(ctx: Ctx) -> list:
    """Sign in with a token (kept in the cookie) and out."""
    from starlette.requests import Request
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    async def login_form(_: Request):
        return page("Sign in", '<form method="post" action="/login"><p><label for="token">'
                    'token</label><input type="password" name="token" id="token" size="50">'
                    ' <button type="submit" id="signin">Sign in</button></p></form>'
                    "<p>An admin creates users and their tokens (<code>layerwise users add"
                    "</code> or the Users page).</p>", None)

    async def login(request: Request):
        same_origin(request)
        form = await request.form()
        token = str(form.get("token", "")).strip()
        user = ctx.store.user_for(token) if token else None
        ctx.store.audit(user["name"] if user else None, "POST", "/login", "sign in",
                        status=303 if user else 401)
        if user is None:
            resp = page("Sign in", "<p class='failed'>unknown or disabled token</p>"
                        '<p><a href="/login">try again</a></p>', None)
            resp.status_code = 401
            return resp
        resp = RedirectResponse("/", 303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", max_age=7 * 86400)
        return resp

    async def logout(_: Request):
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(COOKIE)
        return resp

    return [Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"])]


def _admin_routes(ctx: Ctx) -> list:
    """The leaderboard, the device fleet, users and the audit log."""
    from starlette.requests import Request
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    async def leaderboard(request: Request):
        from layerwise.runtime.history import leaderboard as board

        user = ctx.need(request, "viewer")
        blocks = []
        for metric, unit in (("p50", "ms"), ("size", "bytes"), ("rel_err", "")):
            rows = board(metric, ctx.hub.history_db, limit=50)
            blocks.append(f"<h2>{metric} {unit}</h2>" + _table(
                ["model", "target", "device", metric, "runs"],
                [[e(r["model"]), e(r["target"]), e(r["device"]), f"{r[metric]:.6g}",
                  e(r["runs"])] for r in rows]))
        return page("Leaderboard", "".join(blocks), user)

    async def devices(request: Request):
        user = ctx.need(request, "viewer")
        return page("Devices", _devices_body(ctx, user), user)

    async def add_device(request: Request):
        async def go():
            same_origin(request)
            user = ctx.need(request, "admin")
            form = await request.form()
            ctx.add_device(user, {k: str(form.get(k, "")) for k in ("name", "url", "token")})
            return RedirectResponse("/devices", 303)
        return await ctx.audited(request, "add device (dashboard)", go)

    async def users(request: Request):
        user = ctx.need(request, "admin")
        return page("Users", _users_body(ctx), user)

    async def add_user(request: Request):
        async def go():
            same_origin(request)
            admin = ctx.need(request, "admin")
            form = await request.form()
            made = ctx.add_user({"name": str(form.get("name", "")),
                                 "role": str(form.get("role", ""))})
            return page("User added", f"<p>{e(made['name'])} ({e(made['role'])}). Their "
                        "token, shown this once (only its hash is kept):</p>"
                        f"<pre id='new-token'>{e(made['token'])}</pre>"
                        "<p><a href='/users'>back</a></p>", admin)
        return await ctx.audited(request, "add user (dashboard)", go)

    async def audit(request: Request):
        user = ctx.need(request, "admin")
        rows = [[_when(a["time"]), e(a["user"] or "(unknown)"), e(a["method"]), e(a["path"]),
                 e(a["action"]), e(a["status"]), e(a["detail"] or "")]
                for a in ctx.store.audit_log(500)]
        return page("Audit log", _table(["when", "who", "method", "path", "what", "status",
                                         "detail"], rows), user)

    return [Route("/leaderboard", leaderboard, methods=["GET"]),
            Route("/devices", devices, methods=["GET"]),
            Route("/devices", add_device, methods=["POST"]),
            Route("/users", users, methods=["GET"]),
            Route("/users", add_user, methods=["POST"]),
            Route("/audit", audit, methods=["GET"])]


async def _job_from_form(ctx: Ctx, user: dict, form, save_upload) -> dict:
    """A job request from the submit form; files go through the upload path (size limit)."""
    try:
        options = json.loads(str(form.get("options") or "{}"))
    except ValueError as err:
        raise RequestError(400, f"more options: malformed JSON: {err}") from None
    if not isinstance(options, dict):
        raise RequestError(400, "more options: a JSON object of option: value")
    for key in ("target", "precision", "max_drop"):
        if form.get(key):
            options[key] = str(form[key])
    if options.get("precision") == "fp32":
        options.pop("precision")
    kind = str(form.get("kind") or "compile")
    if kind == "analyze":
        for key in ("target", "precision", "max_drop"):
            options.pop(key, None)
    spec = str(form.get("spec") or "").strip()
    model, data = form.get("model_file"), form.get("data_file")
    if model is not None and getattr(model, "filename", ""):
        spec = (await save_upload(ctx, user, model.filename, model))["ref"]
    if data is not None and getattr(data, "filename", ""):
        options["data"] = (await save_upload(ctx, user, data.filename, data))["ref"]
    body = {"kind": kind, "spec": spec, "options": options}
    if form.get("agent"):
        body["agent"] = str(form["agent"])
    return body


def _job_body(ctx: Ctx, job: dict, user: dict) -> str:
    from layerwise.plan_report import pareto_svg

    jid = job["id"]
    folder = ctx.hub.job_dir(jid)
    facts = [["state", _state(job["state"])], ["submitted by", e(job["user"])],
             ["submitted", _when(job["created"])], ["took", _took(job)],
             ["device", e(job["agent"] or "this hub")],
             ["options", f"<code>{e(json.dumps(job['request'].get('options') or {}))}</code>"]]
    if job["error"]:
        facts.append(["error", f"<span class='failed'>{e(job['error'])}</span>"])
    out = [_table(["", ""], facts)]
    engineer = RANK[user["role"]] >= RANK["engineer"]
    if job["state"] not in FINAL and engineer:
        out.append(f'<form method="post" action="/jobs/{jid}/cancel"><button id="cancel">'
                   "Cancel</button></form>")
    r = job["result"] or {}
    if job["state"] == "done" and job["kind"] in ("compile", "analyze"):
        links = [f'<a id="download" href="{API}/jobs/{jid}/bundle">download '
                 f'{"bundle" if job["kind"] == "compile" else "analysis"} (tar.gz)</a>']
        for rel in ("bundle/report.html", "analysis/report.html", "bundle/manifest.json"):
            if (folder / rel).is_file():
                links.append(f'<a href="{API}/jobs/{jid}/files/{rel}">{e(rel)}</a>')
        out.append("<p>" + " · ".join(links) + "</p>")
    if job["state"] == "done" and job["kind"] == "compile" and engineer:
        agents = [d["name"] for d in ctx.store.devices()]
        out.append(f'<form method="post" action="/jobs/{jid}/profile">Profile this bundle on '
                   f'{_select("agent", agents, "this hub")} <button id="profile">Profile'
                   "</button></form>")
    if job["kind"] == "compile" and r:
        out.append("<h2>Result</h2>" + _table(["", ""], [
            [e(k), f"<code>{e(json.dumps(r[k]))[:400]}</code>"]
            for k in ("target", "precision", "verification", "fidelity", "sizes") if k in r]))
        search = r.get("search")
        if search and search.get("candidates"):
            out.append("<h2>Plan search: Pareto frontier</h2>" + pareto_svg(
                search["candidates"], search.get("pareto", []), search["bound"]["max_drop"]))
    if job["kind"] == "profile" and r.get("latency_ms"):
        lat = r["latency_ms"]
        out.append("<h2>Latency</h2>" + _table(["p50 ms", "p90 ms", "p99 ms", "runtime"], [[
            f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}",
            e(r.get("runtime"))]]))
    log = folder / "log.txt"
    if log.is_file():
        out.append(f"<h2>Log</h2><pre id='log'>{e(log.read_text(errors='replace')[-20000:])}"
                   "</pre>")
    return "".join(out)


def _devices_body(ctx: Ctx, user: dict) -> str:
    out = []
    for d in ctx.devices(live=True):
        info = d["last_info"] or {}
        runs = [j for j in ctx.store.jobs(limit=200, agent=d["name"])
                if j["kind"] == "profile" and j["state"] == "done"]
        points = [(j["id"], j["spec"], j["result"]["latency_ms"]["p50"]) for j in runs
                  if (j["result"] or {}).get("latency_ms")]
        out.append(
            f"<h2>{e(d['name'])} — {_state(d['state'])}</h2>"
            f"<p>{e(d['url'])} · {e(info.get('platform', ''))} · "
            f"{e(info.get('cpus', ''))} CPUs · runtimes: "
            f"{e(', '.join((info.get('runtimes') or {}).values()))} · last seen "
            f"{_when(d['last_seen'])}"
            + (f" · <span class='failed'>{e(d['last_error'])}</span>" if d["last_error"]
               else "") + "</p>"
            + latency_chart(points, f"profiles on {d['name']}")
            + _table(["job", "bundle", "p50 ms"], [[f'<a href="/jobs/{j}">{j}</a>', e(s),
                                                    f"{p:.3f}"] for j, s, p in points]))
    if not out:
        out.append("<p>No device yet. An admin adds an agent (<code>layerwise agent</code>) "
                   "by its URL and token.</p>")
    if user["role"] == "admin":
        out.append('<form method="post" action="/devices"><fieldset><legend>Add a device'
                   '</legend><label>name</label><input name="name"> <label>url</label>'
                   '<input name="url" placeholder="http://host:8700"> <label>token</label>'
                   '<input name="token" type="password"> <button>Add</button></fieldset>'
                   "</form>")
    return "".join(out)


def _users_body(ctx: Ctx) -> str:
    rows = [[e(u["name"]), e(u["role"]), _when(u["created"]), "disabled" if u["disabled"]
             else "active"] for u in ctx.store.users()]
    return (_table(["name", "role", "created", "state"], rows)
            + '<form method="post" action="/users"><fieldset><legend>Add a user</legend>'
            '<label>name</label><input name="name"> <label>role</label>'
            + _select("role", ["viewer", "engineer", "admin"])
            + ' <button id="add-user">Add</button></fieldset></form>')
