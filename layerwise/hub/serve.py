"""`layerwise serve` (the hub on uvicorn) and `layerwise users` (its accounts), torch-free to
parse. The hub keeps everything under --data-dir: hub.db (users, jobs, devices, audit),
runs.db (the results history), jobs/ID/, uploads/ID/ and devices/NAME.token."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from layerwise.base.errors import LayerwiseError

DEFAULT_PORT = 8600


def default_data_dir() -> Path:
    return Path(os.environ.get("LAYERWISE_HUB_DIR", Path.home() / ".layerwise" / "hub"))


def add_serve_parsers(sub) -> None:
    """Add `serve` and `users` to the CLI's subparsers (imports no server library)."""
    p = sub.add_parser("serve", help="serve the team hub: REST API, dashboard, job queue")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default "
                   f"{DEFAULT_PORT}; 0: any free port)")
    _data_dir(p)
    p.add_argument("--models-dir", default=None, help="folder of Hugging Face model folders "
                   "that requests may name as hf:NAME")
    p.add_argument("--max-upload-mb", type=float, default=256, help="largest upload (MB)")
    p.add_argument("--jobs", type=int, default=1, help="jobs run at once")
    p.add_argument("--quiet", action="store_true", help="no access log")
    u = sub.add_parser("users", help="manage the hub's users (tokens are shown once)")
    u.add_argument("action", choices=["add", "list", "disable"])
    u.add_argument("name", nargs="?", help="user name (add, disable)")
    u.add_argument("--role", choices=["viewer", "engineer", "admin"], default="viewer")
    _data_dir(u)
    u.add_argument("--json", action="store_true", help="print JSON for scripts")


def _data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="the hub's folder (default "
                   "$LAYERWISE_HUB_DIR or ~/.layerwise/hub)")


def run_users(args: argparse.Namespace) -> int:
    """`layerwise users add|list|disable`, straight on the hub's database."""
    import json

    from layerwise.hub.store import Store

    store = Store(Path(args.data_dir or default_data_dir()) / "hub.db")
    if args.action == "list":
        rows = store.users()
        print(json.dumps(rows, indent=2) if args.json else "\n".join(
            f"{u['name']}\t{u['role']}\t{'disabled' if u['disabled'] else 'active'}"
            for u in rows) or "no users")
        return 0
    if not args.name:
        raise LayerwiseError(f"users {args.action} needs a NAME")
    if args.action == "disable":
        if not store.disable_user(args.name):
            raise LayerwiseError(f"no user {args.name!r}")
        store.audit(_local_user(), "CLI", "users disable", f"disable user {args.name}",
                    status=200)
        return 0
    token = store.add_user(args.name, args.role)
    store.audit(_local_user(), "CLI", "users add", f"add user {args.name} ({args.role})",
                status=201)
    print(json.dumps({"name": args.name, "role": args.role, "token": token}) if args.json
          else token)
    return 0


def _local_user() -> str:
    """Who ran a `layerwise users` command: the machine's account (recorded as cli:NAME)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid {os.getuid()}"


def run_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted; prints the URL it listens on (first line of stdout)."""
    from layerwise.hub.app import build_app
    from layerwise.hub.context import HubConfig
    from layerwise.runtime.agent import listen

    if args.max_upload_mb <= 0 or args.jobs < 1:
        raise LayerwiseError("--max-upload-mb must be > 0 and --jobs >= 1")
    try:
        import multipart  # noqa: F401 - the dashboard's forms
        import uvicorn
    except ModuleNotFoundError as e:
        raise LayerwiseError(f"the hub needs its server libraries ({e.name} is not "
                             "installed): pip install 'layerwise[serve]'") from e
    models = Path(args.models_dir).resolve() if args.models_dir else None
    if models is not None and not models.is_dir():
        raise LayerwiseError(f"--models-dir {args.models_dir} is not a folder")
    data = Path(args.data_dir or default_data_dir()).resolve()
    cfg = HubConfig(data_dir=data, models_dir=models, slots=args.jobs,
                    max_upload_bytes=int(args.max_upload_mb * (1 << 20)))
    app = build_app(cfg)  # opens (and creates) the database: a bad --data-dir fails here
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if not app.state.ctx.store.count_users():
        print(f"layerwise serve: no users yet; create an admin with `layerwise users add NAME "
              f"--role admin --data-dir {data}`", file=sys.stderr)
    print(f"layerwise hub listening on http://{shown}:{port} (data dir {data})", flush=True)
    config = uvicorn.Config(app, log_level="warning" if args.quiet else "info",
                            access_log=not args.quiet, proxy_headers=False,
                            server_header=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m layerwise.hub.serve ...`: the same as `layerwise serve ...`."""
    parser = argparse.ArgumentParser(prog="layerwise")
    add_serve_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_serve(args)
    except LayerwiseError as e:
        print(f"layerwise: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
