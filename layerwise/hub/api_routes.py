"""The hub's REST API under /api/v1 (the schema: /api/v1/openapi.json, layerwise/hub/openapi.py).

Jobs run the `layerwise` command with the options the CLI declares; uploads are streamed to
disk under a size limit; bundles come back as tar.gz; the results history is read as the
`runs` and `leaderboard` commands read it.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import uuid
from pathlib import Path

from layerwise.hub.context import API, Ctx, read_json
from layerwise.hub.jobspec import KINDS, RequestError, accepted_fields
from layerwise.hub.store import FINAL

UPLOAD_NAME = r"[\w][\w.\-]{0,120}"
UPLOAD_SUFFIXES = (".pt2", ".npz", ".txt", ".tsv", ".safetensors", ".pt", ".pth", ".zip")


def routes(ctx: Ctx) -> list:
    """The API's routes, bound to the hub's state."""
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    from layerwise.hub.openapi import schema

    async def openapi(_: Request) -> JSONResponse:
        return JSONResponse(schema())

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse(ctx.need(request, "viewer"))

    async def options(request: Request) -> JSONResponse:
        ctx.need(request, "viewer")
        return JSONResponse(option_table())

    async def submit(request: Request) -> JSONResponse:
        async def go():
            user = ctx.need(request, "engineer")
            job = ctx.submit(user, await read_json(request, ctx.cfg.max_body_bytes))
            return JSONResponse(public(job), 201)
        return await ctx.audited(request, "submit job", go)

    async def jobs(request: Request) -> JSONResponse:
        ctx.need(request, "viewer")
        state = request.query_params.get("state")
        return JSONResponse([public(j) for j in ctx.store.jobs(limit=_limit(request),
                                                             state=state)])

    async def job(request: Request) -> JSONResponse:
        ctx.need(request, "viewer")
        return JSONResponse(public(ctx.job(request.path_params["id"])))

    async def cancel(request: Request) -> JSONResponse:
        async def go():
            ctx.need(request, "engineer")
            return JSONResponse(public(ctx.cancel(request.path_params["id"])))
        return await ctx.audited(request, f"cancel job {request.path_params['id']}", go)

    async def log(request: Request) -> StreamingResponse:
        ctx.need(request, "viewer")
        job = ctx.job(request.path_params["id"])
        follow = request.query_params.get("follow", "0") not in ("0", "false", "")
        path = ctx.hub.job_dir(job["id"]) / "log.txt"
        return StreamingResponse(_follow(ctx, job["id"], path, follow),
                                 media_type="text/plain; charset=utf-8")

    async def bundle(request: Request) -> FileResponse:
        ctx.need(request, "viewer")
        job = ctx.job(request.path_params["id"])
        folder = ctx.hub.job_dir(job["id"]) / ("bundle" if job["kind"] == "compile"
                                               else "analysis")
        if job["state"] != "done" or not folder.is_dir():
            raise RequestError(404, f"job {job['id']} has no bundle ({job['state']})")
        tmp = Path(tempfile.mkdtemp(prefix="layerwise-hub-"))
        archive = tmp / f"job-{job['id']}.tar.gz"
        await asyncio.to_thread(_pack, folder, archive)
        return FileResponse(archive, media_type="application/gzip", filename=archive.name,
                            background=BackgroundTask(_remove, tmp))

    async def job_file(request: Request) -> FileResponse:
        ctx.need(request, "viewer")
        path = ctx.job_file(request.path_params["id"], request.path_params["path"])
        return FileResponse(path, headers={"Content-Security-Policy": "default-src 'none'; "
                                           "style-src 'unsafe-inline'; img-src data:"})

    async def upload(request: Request) -> JSONResponse:
        async def go():
            user = ctx.need(request, "engineer")
            name = request.query_params.get("name", "")
            return JSONResponse(await save_upload(ctx, user, name, request), 201)
        return await ctx.audited(request, "upload", go)

    return [
        Route(f"{API}/openapi.json", openapi, methods=["GET"]),
        Route(f"{API}/whoami", whoami, methods=["GET"]),
        Route(f"{API}/options", options, methods=["GET"]),
        Route(f"{API}/jobs", submit, methods=["POST"]),
        Route(f"{API}/jobs", jobs, methods=["GET"]),
        Route(f"{API}/jobs/{{id}}", job, methods=["GET"]),
        Route(f"{API}/jobs/{{id}}/cancel", cancel, methods=["POST"]),
        Route(f"{API}/jobs/{{id}}/log", log, methods=["GET"]),
        Route(f"{API}/jobs/{{id}}/bundle", bundle, methods=["GET"]),
        Route(f"{API}/jobs/{{id}}/files/{{path:path}}", job_file, methods=["GET"]),
        Route(f"{API}/uploads", upload, methods=["POST"]),
        *_fleet_routes(ctx),
    ]


def _fleet_routes(ctx: Ctx) -> list:
    """The results history, the device fleet, users and the audit log."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def runs(request: Request) -> JSONResponse:
        from layerwise.runtime.history import query

        ctx.need(request, "viewer")
        q = request.query_params
        return JSONResponse(await asyncio.to_thread(
            query, ctx.hub.history_db, kind=q.get("kind"), model=q.get("model"),
            target=q.get("target"), device=q.get("device"), limit=_limit(request)))

    async def leaderboard(request: Request) -> JSONResponse:
        from layerwise.runtime.history import leaderboard as board

        ctx.need(request, "viewer")
        q = request.query_params
        try:
            rows = await asyncio.to_thread(board, q.get("metric", "p50"), ctx.hub.history_db,
                                           device=q.get("device"), target=q.get("target"),
                                           limit=_limit(request))
        except RequestError:
            raise
        except Exception as e:  # an unknown metric is the caller's mistake
            raise RequestError(400, str(e).splitlines()[0]) from None
        return JSONResponse(rows)

    async def devices(request: Request) -> JSONResponse:
        ctx.need(request, "viewer")
        live = request.query_params.get("live", "1") != "0"
        return JSONResponse(await asyncio.to_thread(ctx.devices, live))

    async def add_device(request: Request) -> JSONResponse:
        async def go():
            user = ctx.need(request, "admin")
            body = await read_json(request, ctx.cfg.max_body_bytes)
            return JSONResponse(await asyncio.to_thread(ctx.add_device, user, body), 201)
        return await ctx.audited(request, "add device", go)

    async def remove_device(request: Request) -> JSONResponse:
        name = request.path_params["name"]

        async def go():
            ctx.need(request, "admin")
            if not ctx.store.remove_device(name):
                raise RequestError(404, f"no device {name!r}")
            ctx.hub.agent_token_file(name).unlink(missing_ok=True)
            return JSONResponse({"removed": name})
        return await ctx.audited(request, f"remove device {name}", go)

    async def users(request: Request) -> JSONResponse:
        ctx.need(request, "admin")
        return JSONResponse(ctx.store.users())

    async def add_user(request: Request) -> JSONResponse:
        async def go():
            ctx.need(request, "admin")
            made = ctx.add_user(await read_json(request, ctx.cfg.max_body_bytes))
            return JSONResponse(made, 201)
        return await ctx.audited(request, "add user", go)

    async def disable_user(request: Request) -> JSONResponse:
        name = request.path_params["name"]

        async def go():
            ctx.need(request, "admin")
            if not ctx.store.disable_user(name):
                raise RequestError(404, f"no user {name!r}")
            return JSONResponse({"disabled": name})
        return await ctx.audited(request, f"disable user {name}", go)

    async def audit(request: Request) -> JSONResponse:
        ctx.need(request, "admin")
        return JSONResponse(ctx.store.audit_log(_limit(request, 200)))

    return [
        Route(f"{API}/runs", runs, methods=["GET"]),
        Route(f"{API}/leaderboard", leaderboard, methods=["GET"]),
        Route(f"{API}/devices", devices, methods=["GET"]),
        Route(f"{API}/devices", add_device, methods=["POST"]),
        Route(f"{API}/devices/{{name}}", remove_device, methods=["DELETE"]),
        Route(f"{API}/users", users, methods=["GET"]),
        Route(f"{API}/users", add_user, methods=["POST"]),
        Route(f"{API}/users/{{name}}", disable_user, methods=["DELETE"]),
        Route(f"{API}/audit", audit, methods=["GET"]),
    ]


def public(job: dict) -> dict:
    """A job as the API shows it: without the command line (the hub's own paths)."""
    return {k: v for k, v in job.items() if k != "argv"}


def option_table() -> dict:
    """Per job kind, every option a request may set: type, default, help (the CLI's)."""
    return {kind: {name: {"type": str(f.type), "default": f.default,
                          "help": f.metadata.get("help", "")}
                   for name, f in accepted_fields(kind).items()} for kind in KINDS}


async def save_upload(ctx: Ctx, user: dict, name: str, source) -> dict:
    """Stream an upload (a request, or a form file with `.read`) into uploads/ID/NAME;
    413 past the hub's limit (nothing kept), 400 for a name it does not take."""
    from layerwise.runtime.agent_wire import receive_upload

    if not re.fullmatch(UPLOAD_NAME, name) or not name.endswith(UPLOAD_SUFFIXES):
        raise RequestError(400, f"upload name {name!r}: give ?name=FILE ending in one of "
                           f"{', '.join(UPLOAD_SUFFIXES)} (letters, digits, '.', '-', '_')")
    limit = ctx.cfg.max_upload_bytes
    declared = getattr(source, "headers", {}).get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"upload of {declared} bytes is over the hub's limit of "
                           f"{limit >> 20} MB (serve --max-upload-mb)")
    upload_id = uuid.uuid4().hex
    folder = ctx.hub.data_dir / "uploads" / upload_id
    folder.mkdir(parents=True)
    dest = folder / name
    ok = await (receive_upload(source, dest, limit) if hasattr(source, "stream")
                else _copy_file(source, dest, limit))
    size = dest.stat().st_size
    if not ok:
        _remove(folder)
        raise RequestError(413, f"upload over the hub's limit of {limit >> 20} MB "
                           "(serve --max-upload-mb)")
    ctx.store.add_upload(upload_id, name, size, user["name"])
    return {"id": upload_id, "ref": f"upload:{upload_id}", "name": name, "bytes": size}


async def _copy_file(form_file, dest: Path, limit: int) -> bool:
    size = 0
    with open(dest, "wb") as f:
        while chunk := await form_file.read(1 << 20):
            size += len(chunk)
            if size > limit:
                return False
            f.write(chunk)
    return True


async def _follow(ctx: Ctx, job_id: int, path: Path, follow: bool):
    """The job's log; with `follow`, what it appends until the job ends."""
    pos = 0
    while True:
        job = ctx.store.job(job_id)
        if path.exists():
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            pos += len(chunk)
            if chunk:
                yield chunk
        if not follow or job is None or job["state"] in FINAL:
            return
        await asyncio.sleep(0.5)


def _limit(request, default: int = 100) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 10000:
        raise RequestError(400, "limit must be an integer from 1 to 10000")
    return int(raw)


def _pack(folder: Path, archive: Path) -> None:
    import tarfile

    with tarfile.open(archive, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                tar.add(p, arcname=str(p.relative_to(folder)), recursive=False)


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
