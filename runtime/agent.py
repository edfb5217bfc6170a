"""The device agent: `layerwise agent` serves HTTP on the device and profiles uploaded bundles,
one job at a time, for `layerwise profile BUNDLE --remote URL`.

Endpoints (every request needs `Authorization: Bearer TOKEN`, compared in constant time):

- `GET  /v1/info`    the device: platform, CPUs, memory, installed runtimes, limits, queue.
- `POST /v1/profile` body: the bundle as tar.gz (size-limited while it streams in); query:
  runs, warmup, threads, batch, per_op. Archive, bundle (sha256) and options are checked
  before the job is queued (400); then the reply is 200 with one JSON line per event:
  `{"event": "queued", "position": N}` (jobs ahead), `{"event": "running"}`, heartbeats,
  and finally `{"event": "result", "result": {...}}` or `{"event": "error", "error": "..."}`.

Errors before the stream are `{"error": one line}` with 400, 401, 403, 404, 413 or 503; no
error names the agent's own folders by their absolute path (see `scrub`).
Each job unpacks into its own folder under the work dir and runs in a child process
(runtime/agent_job.py); the folder is removed when the job ends, or when the agent stops
(SIGTERM, Ctrl-C: running children are killed first). The work dir is locked for the agent's
lifetime (runtime/agent_workdir.py), so a second agent on it is refused, and folders left by a
killed agent are removed when the next one takes the lock. Built on Starlette + uvicorn
(imported only here, the `agent` extra); torch-free.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import platform
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from layerwise.base import __version__
from layerwise.base.errors import LayerwiseError
from layerwise.runtime.agent_wire import (
    API,
    decode_options,
    event_line,
    read_token,
    receive_upload,
    unpack_archive,
)
from layerwise.runtime.agent_workdir import JOB_PREFIX, WorkDir, claim

AGENT_VERSION = __version__
# Distributions that provide each target's runtime (the first installed one is reported).
RUNTIME_DISTS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "openvino": ("openvino",),
    "tflite": ("ai-edge-litert", "tflite-runtime"),
    "tvm": ("apache-tvm", "tlcpack"),
    "tensorrt": ("tensorrt",),
}


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What one agent serves with; `token` is compared in constant time."""

    token: bytes
    work_dir: Path
    max_upload_bytes: int
    max_queue: int = 8
    job_timeout_s: float = 3600.0
    heartbeat_s: float = 5.0
    allow_native: bool = False  # load native libraries (TVM bundles) compiled elsewhere


class RequestError(Exception):
    """A refused request: HTTP status and a one-line message for `{"error": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0][:500]


# After the work dir: a job folder, then its bundle; not a longer name (/w/agent2 for /w/agent)
_UNDER_WORK_DIR = rf"(?P<job>/{JOB_PREFIX}\w+(?P<bundle>/bundle)?)?(?![\w.-])"


def scrub(message: str, work_dir: Path) -> str:
    """MESSAGE as a client may see it: a job's bundle folder named `bundle`, a job folder
    `job` and the work dir `work-dir`, never by their absolute paths (as given or resolved)."""
    roots = {os.path.abspath(work_dir).rstrip("/"), str(Path(work_dir).resolve()).rstrip("/")}
    for root in sorted((r for r in roots if r), key=len, reverse=True):
        message = re.sub(re.escape(root) + _UNDER_WORK_DIR,
                         lambda m: "bundle" if m["bundle"] else "job" if m["job"] else "work-dir",
                         message)
    return message


def device_info(cfg: AgentConfig | None = None) -> dict[str, Any]:
    """Platform, CPUs, memory and the runtime behind each target that is installed here."""
    runtimes = {}
    for target, dists in RUNTIME_DISTS.items():
        for dist in dists:
            with contextlib.suppress(metadata.PackageNotFoundError):
                runtimes[target] = f"{dist} {metadata.version(dist)}"
                break
    mem_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        mem_mb = int(f.readline().split()[1]) // 1024
    info = {"agent_version": AGENT_VERSION, "host": socket.gethostname(),
            "platform": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "memory_mb": mem_mb, "runtimes": runtimes}
    if cfg is not None:
        info["max_upload_bytes"] = cfg.max_upload_bytes
    return info


class JobQueue:
    """First come, first served, one job at a time; position = jobs ahead (0: running)."""

    def __init__(self) -> None:
        self._line: list[str] = []
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._line)

    @contextlib.asynccontextmanager
    async def turn(self, job_id: str, report: Callable[[int], None]) -> AsyncIterator[None]:
        """Wait for the job's turn, calling report(position) whenever the position changes."""
        async with self._changed:
            self._line.append(job_id)
            try:
                last = None
                while (pos := self._line.index(job_id)) != 0:
                    if pos != last:
                        report(pos)
                        last = pos
                    await self._changed.wait()
            except BaseException:
                self._line.remove(job_id)
                self._changed.notify_all()
                raise
        try:
            yield
        finally:
            async with self._changed:
                self._line.remove(job_id)
                self._changed.notify_all()


class Job:
    """One upload: its folder, options, and the events its reply streams."""

    def __init__(self, cfg: AgentConfig, queue: JobQueue, job_dir: Path,
                 options: dict[str, Any]) -> None:
        self.cfg, self.queue, self.dir, self.options = cfg, queue, job_dir, options
        self.events: asyncio.Queue[dict | None] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        """Queue, run the child process, emit the result; always remove the job folder."""
        arrived = time.time()
        first_position = len(self.queue)
        try:
            async with self.queue.turn(self.dir.name, self._queued):
                started = time.time()
                self.events.put_nowait({"event": "running"})
                result = await self._run_child()
                result["remote"] = {
                    "host": socket.gethostname(), "agent_version": AGENT_VERSION,
                    "queue_position": first_position, "queued_s": started - arrived,
                    "started_at": started, "finished_at": time.time()}
                result["bundle"] = scrub(str(result.get("bundle", "")), self.cfg.work_dir)
                self.events.put_nowait({"event": "result", "result": result})
        except asyncio.CancelledError:  # the client went away, or the agent is stopping
            self.events.put_nowait({"event": "error", "status": 503, "error": "the agent was "
                                    "stopped during the run; retry when it is back"})
            raise
        except RequestError as e:
            self.events.put_nowait({"event": "error", "status": e.status, "error": e.message})
        except Exception as e:  # noqa: BLE001 - reported to the client, not raised
            print(f"layerwise agent: job {self.dir.name} failed: {e!r}", file=sys.stderr)
            self.events.put_nowait({"event": "error", "status": 500,
                                    "error": f"internal error on the agent: {_one_line(e)}"})
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.events.put_nowait(None)

    def _queued(self, position: int) -> None:
        self.events.put_nowait({"event": "queued", "position": position})

    async def _run_child(self) -> dict:
        result_path = self.dir / "result.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "layerwise.runtime.agent_job", str(self.dir / "bundle"),
            json.dumps({**self.options, "trust_native": self.cfg.allow_native}),
            str(result_path), cwd=self.dir,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        reader = asyncio.ensure_future(proc.stderr.read())
        try:
            await asyncio.wait_for(_exit_of(proc), self.cfg.job_timeout_s)
        except TimeoutError:
            raise RequestError(504, f"the profile ran past the agent's --job-timeout of "
                               f"{self.cfg.job_timeout_s:g} s; use fewer --runs") from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await _exit_of(proc)
            # what the job left running (OpenVINO's telemetry sender, forked from a thread,
            # can hang holding stderr open) goes with it: the job is over when it exits
            _kill_group(proc.pid)
            proc.stdin.close()
        try:
            err = await asyncio.wait_for(reader, 10)
        except TimeoutError:
            reader.cancel()
            err = b""
        if proc.returncode in (0, 2) and result_path.is_file():
            result = json.loads(result_path.read_text())
            if "error" in result:
                raise RequestError(400, result["error"])
            return result
        tail = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise RequestError(500, f"the profile process exited with code {proc.returncode} "
                           f"({tail[:300]})")

    async def stream(self) -> AsyncIterator[bytes]:
        """The reply body: event lines, a heartbeat when nothing happened for a while. If the
        client goes away the job is cancelled (its child killed, its folder removed)."""
        t0 = time.monotonic()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(self.events.get(), self.cfg.heartbeat_s)
                except TimeoutError:
                    yield event_line({"event": "heartbeat",
                                      "elapsed_s": round(time.monotonic() - t0, 1)})
                    continue
                if event is None:
                    return
                if "error" in event:
                    event = {**event, "error": scrub(event["error"], self.cfg.work_dir)}
                yield event_line(event)
        finally:
            if self.task is not None and not self.task.done():
                self.task.cancel()


def _prepare(archive: Path, bundle_dir: Path, options: dict, max_unpacked: int) -> None:
    """Unpack and check the bundle before it is queued (runs in a worker thread)."""
    from layerwise.runtime.bundle import open_bundle
    from layerwise.runtime.profile import batch_inputs

    unpack_archive(archive, bundle_dir, max_unpacked)
    archive.unlink()
    bundle = open_bundle(bundle_dir, check=True)
    if "generation" in bundle.manifest:  # a generator: profiled by generating
        from layerwise.runtime.generate import generation_section

        generation_section(bundle)
    else:
        batch_inputs(bundle, options["batch"])


async def _accept(request, cfg: AgentConfig, options: dict) -> Path:
    """Receive, unpack and check an upload in a new job folder, returned; on any failure the
    folder is removed, and a bad upload is a 400."""
    from anyio import to_thread

    job_dir = Path(tempfile.mkdtemp(prefix=JOB_PREFIX, dir=cfg.work_dir))
    try:
        archive = job_dir / "upload.tar.gz"
        if not await receive_upload(request, archive, cfg.max_upload_bytes):
            raise RequestError(413, "upload over the agent's limit of "
                               f"{cfg.max_upload_bytes / (1 << 20):g} MB; start the agent "
                               "with a larger --max-upload-mb")
        await to_thread.run_sync(_prepare, archive, job_dir / "bundle", options,
                                 4 * cfg.max_upload_bytes)
    except LayerwiseError as e:  # ArchiveError, BundleError, a batch the bundle refuses
        shutil.rmtree(job_dir, ignore_errors=True)
        raise RequestError(400, _one_line(e)) from e
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    return job_dir


async def _exit_of(proc: asyncio.subprocess.Process) -> int:
    """The child's exit code once it has exited. (asyncio's wait() answers only once its
    pipes close too, which a process it left behind may keep open.)"""
    while proc.returncode is None:
        await asyncio.sleep(0.05)
    return proc.returncode


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in the job's process group (none: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class TokenAuth:
    """Pure ASGI middleware: 401 without a bearer token, 403 with a wrong one (compared in
    constant time); the body is never read before the token is accepted."""

    def __init__(self, app, token: bytes) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        from starlette.responses import JSONResponse

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            response = JSONResponse(
                {"error": "no token: send `Authorization: Bearer TOKEN` (the client's "
                          "--token-file)"}, 401, headers={"WWW-Authenticate": "Bearer"})
        elif not hmac.compare_digest(given.strip(), self.token):
            response = JSONResponse(
                {"error": "wrong token: use the token file the agent was started with"}, 403)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def build_app(cfg: AgentConfig, work: WorkDir | None = None):
    """The Starlette application: token check around every route, JSON errors. On shutdown
    (or `app.state.stop_jobs()`) every job is cancelled: its child killed, its folder removed;
    WORK is then swept and released."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    queue = JobQueue()
    running: set[asyncio.Task] = set()  # strong references until each job ends
    receiving = [0]  # uploads being received or checked, not yet queued

    async def info(_: Request) -> JSONResponse:
        return JSONResponse({**device_info(cfg), "queue": {"jobs": len(queue),
                                                          "max_waiting": cfg.max_queue}})

    async def profile(request: Request) -> StreamingResponse:
        try:
            options = decode_options(dict(request.query_params))
        except LayerwiseError as e:
            raise RequestError(400, _one_line(e)) from e
        if len(queue) + receiving[0] > cfg.max_queue:
            raise RequestError(503, f"the agent already has {len(queue) + receiving[0]} jobs; "
                               "retry later")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_upload_bytes:
            raise RequestError(413, f"upload of {declared} bytes is over the agent's limit of "
                               f"{cfg.max_upload_bytes / (1 << 20):g} MB; start the agent "
                               "with a larger --max-upload-mb")
        receiving[0] += 1
        try:
            job_dir = await _accept(request, cfg, options)
        finally:
            receiving[0] -= 1
        job = Job(cfg, queue, job_dir, options)
        job.task = asyncio.create_task(job.run())
        running.add(job.task)
        job.task.add_done_callback(running.discard)
        return StreamingResponse(job.stream(), media_type="application/x-ndjson")

    async def stop_jobs() -> None:
        for task in list(running):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def lifespan(_app) -> AsyncIterator[None]:
        yield
        await stop_jobs()
        if work is not None:
            work.sweep()
            work.release()

    async def refused(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestError):
            return JSONResponse({"error": scrub(exc.message, cfg.work_dir)}, exc.status)
        if isinstance(exc, HTTPException):
            return JSONResponse({"error": f"{exc.detail}: {API}/info (GET) and "
                                          f"{API}/profile (POST) are served"}, exc.status_code)
        if isinstance(exc, ClientDisconnect):
            return JSONResponse({"error": "client went away during the upload"}, 400)
        print(f"layerwise agent: internal error: {exc!r}", file=sys.stderr)
        return JSONResponse({"error": scrub(f"internal error on the agent: {_one_line(exc)}",
                                            cfg.work_dir)}, 500)

    app = Starlette(
        routes=[Route(f"{API}/info", info, methods=["GET"]),
                Route(f"{API}/profile", profile, methods=["POST"])],
        middleware=[Middleware(TokenAuth, token=cfg.token)],
        exception_handlers={RequestError: refused, HTTPException: refused,
                            ClientDisconnect: refused, Exception: refused},
        lifespan=lifespan)
    app.state.stop_jobs = stop_jobs
    return app


def add_agent_parser(subparsers) -> argparse.ArgumentParser:
    """Add `agent` to the CLI's subparsers (imports no server library)."""
    p = subparsers.add_parser("agent", help="serve remote profiling on this device (HTTP)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8700, help="port (0: any free port)")
    p.add_argument("--token-file", required=True,
                   help="file holding the token every request must send")
    p.add_argument("--work-dir", default=None,
                   help="where jobs unpack (default: TMPDIR/layerwise-agent)")
    p.add_argument("--max-upload-mb", type=float, default=512.0,
                   help="largest bundle archive accepted, in MB (default: 512)")
    p.add_argument("--max-queue", type=int, default=8, help="jobs that may wait (default: 8)")
    p.add_argument("--allow-native", action="store_true",
                   help="profile bundles whose model is native code (TVM libraries): every "
                        "token holder can then run code on this device")
    p.add_argument("--job-timeout", type=float, default=3600.0,
                   help="seconds a profile may run before it is killed (default: 3600)")
    p.add_argument("--quiet", action="store_true", help="no request log")
    return p


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on HOST:PORT; a one-line error when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise LayerwiseError(f"cannot listen on {host}:{port} ({e.strerror or e}); "
                             "choose another --port or --host") from e


def run_agent(args: argparse.Namespace) -> int:
    """Serve until interrupted (SIGTERM, Ctrl-C: jobs are killed and their folders removed);
    prints the URL it listens on (first line of stdout)."""
    token = read_token(args.token_file)  # refuses a token file other users may read
    if args.max_upload_mb <= 0:
        raise LayerwiseError("--max-upload-mb must be > 0")
    try:
        import uvicorn
    except ModuleNotFoundError as e:
        raise LayerwiseError(f"the agent needs its server library ({e.name} is not "
                             "installed): pip install 'layerwise[agent]'") from e
    work, swept = claim(args.work_dir or Path(tempfile.gettempdir()) / "layerwise-agent")
    with work:
        _serve(args, token, work, swept, uvicorn)
    return 0


def _serve(args: argparse.Namespace, token: str, work: WorkDir, swept: int, uvicorn) -> None:
    cfg = AgentConfig(token=token.encode(), work_dir=work.path,
                      max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                      max_queue=args.max_queue, job_timeout_s=args.job_timeout,
                      allow_native=args.allow_native)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    if host not in ("127.0.0.1", "::1"):
        print(f"layerwise agent: listening on {host}, beyond this machine: the token travels "
              "in clear over HTTP; use it on a trusted network or through an SSH tunnel",
              file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"layerwise agent {AGENT_VERSION} listening on http://{shown}:{port} "
          f"(work dir {cfg.work_dir}, uploads up to {args.max_upload_mb:g} MB"
          + (f", removed {swept} stale job folders" if swept else "") + ")", flush=True)
    app = build_app(cfg, work)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            await app.state.stop_jobs()  # before uvicorn waits for the job streams to end
            await super().shutdown(sockets=sockets)

    config = uvicorn.Config(app, log_level="warning" if args.quiet else "info",
                            access_log=not args.quiet, proxy_headers=False,
                            server_header=False, timeout_graceful_shutdown=5)
    Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    """`python -m layerwise.runtime.agent ...`: the same as `layerwise agent ...`."""
    parser = argparse.ArgumentParser(prog="layerwise")
    add_agent_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["agent", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_agent(args)
    except LayerwiseError as e:
        print(f"layerwise: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
