"""`layerwise serve`'s application: the REST API under /api/v1 (api_routes.py) and the
dashboard pages (pages.py) on Starlette, with the job runner started and stopped with it.

Errors are `{"error": one line}` with a 4xx status (the dashboard shows 401/403 as a page);
an internal error is a 500 with one line and no traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator

from layerwise.hub.context import API, Ctx, HubConfig, line
from layerwise.hub.jobspec import RequestError
from layerwise.hub.runner import Runner


def build_app(cfg: HubConfig):
    """The Starlette application of the hub at cfg.data_dir."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse

    from layerwise.hub import api_routes, pages

    ctx = Ctx(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_app) -> AsyncIterator[None]:
        ctx.runner = Runner(ctx.hub, cfg.slots)
        ctx.runner.start()
        yield
        await ctx.runner.stop()

    async def refused(request: Request, exc: Exception):
        if isinstance(exc, RequestError):
            status, message = exc.status, str(exc)
        elif isinstance(exc, HTTPException):
            status, message = exc.status_code, f"{exc.detail}: {request.method} " \
                                               f"{request.url.path}; see {API}/openapi.json"
        elif isinstance(exc, ClientDisconnect):
            status, message = 400, "client went away during the request"
        else:
            print(f"layerwise serve: internal error: {exc!r}", file=sys.stderr)
            status, message = 500, f"internal error: {type(exc).__name__}: {line(exc)}"
        if not request.url.path.startswith(API) and status in (401, 403):
            return pages.refused_page(request, status, message)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message}, status, headers=headers)

    app = Starlette(routes=api_routes.routes(ctx) + pages.routes(ctx),
                    exception_handlers={RequestError: refused, HTTPException: refused,
                                        ClientDisconnect: refused, Exception: refused},
                    lifespan=lifespan)
    app.state.ctx = ctx
    return app


