"""The workstation side of the device agent: `layerwise profile BUNDLE --remote URL
--token-file F` packs the bundle, uploads it, waits its turn and returns the agent's profile.

Standard library only (urllib), so the runtime-only install stays small. Every failure is one
RemoteError line that says what to do; nothing is written locally but a temporary archive,
removed whatever happens.
"""

from __future__ import annotations

import http.client
import json
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerwise.base.errors import LayerwiseError
from layerwise.runtime.agent_wire import API, encode_options, pack_bundle, read_token

# How long the client waits for any word from the agent (it sends a heartbeat every few s).
TIMEOUT_S = 60.0
# What a lost connection looks like while reading the reply (reset, closed mid-chunk, …).
LOST = (ConnectionError, http.client.HTTPException, EOFError)


class RemoteError(LayerwiseError):
    """A remote profile that failed; `status` is the agent's HTTP status where it sent one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _base_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RemoteError(f"--remote {url!r} is not an agent URL; use http://HOST:8700")
    return url.rstrip("/")


def _refused(base: str, e: urllib.error.HTTPError, token_file: str) -> RemoteError:
    """The agent's one-line {"error": ...} turned into what the user should do."""
    try:
        detail = json.loads(e.read() or b"{}").get("error") or e.reason
    except (ValueError, AttributeError, *LOST):
        detail = e.reason
    hint = {
        401: f"the agent at {base} wants a token: pass --token-file",
        403: f"the agent at {base} refused the token in {token_file}: use the token file "
             "the agent was started with",
        413: f"the agent at {base} refused the upload: {detail}",
        503: f"the agent at {base} is busy ({detail})",
    }.get(e.code, f"the agent at {base} refused the bundle (HTTP {e.code}): {detail}")
    return RemoteError(hint, e.code)


def _unreachable(base: str, e: BaseException) -> RemoteError:
    reason = getattr(e, "reason", e)
    return RemoteError(f"cannot reach the device agent at {base} ({reason}); start it on the "
                       "device with `layerwise agent --token-file F` and check --remote")


def _lost(base: str, e: BaseException) -> RemoteError:
    what = "no word for too long" if isinstance(e, TimeoutError) else e.__class__.__name__
    return RemoteError(f"the agent at {base} stopped answering during the run ({what}); "
                       "check that it still runs on the device (its log says why), then retry")


def _open(request: urllib.request.Request, base: str, token_file: str, timeout: float):
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise _refused(base, e, token_file) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionResetError | BrokenPipeError):
            raise _lost(base, e.reason) from None
        raise _unreachable(base, e) from None
    except TimeoutError as e:
        raise _unreachable(base, e) from None
    except LOST as e:
        raise _lost(base, e) from None


def agent_info(url: str, token_file: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """The agent's device: platform, CPUs, memory, installed runtimes, limits, queue."""
    base = _base_url(url)
    token = read_token(token_file)
    req = urllib.request.Request(f"{base}{API}/info",
                                 headers={"Authorization": f"Bearer {token}"})
    with _open(req, base, token_file, timeout) as resp:
        try:
            return json.loads(resp.read())
        except LOST as e:
            raise _lost(base, e) from None


def _read_events(resp, base: str, progress: Callable[[str], None]) -> dict:
    """Follow the agent's event lines to the result; a stream that ends early is a lost run."""
    try:
        for raw in resp:
            event = json.loads(raw)
            kind = event.get("event")
            if kind == "result":
                return event["result"]
            if kind == "error":
                raise RemoteError(f"the agent at {base}: {event['error']}", event.get("status"))
            if kind == "queued":
                progress(f"queued on {base}: {event['position']} job(s) ahead")
            elif kind == "running":
                progress(f"profiling on {base}")
    except (TimeoutError, *LOST) as e:
        raise _lost(base, e) from None
    except ValueError as e:  # a line cut short
        raise _lost(base, e) from None
    raise _lost(base, EOFError("reply ended before the result"))


def remote_profile(bundle_dir: str | Path, url: str, token_file: str, *,
                   progress: Callable[[str], None] | None = None, timeout: float = TIMEOUT_S,
                   **profile_options: Any) -> dict[str, Any]:
    """Profile BUNDLE_DIR on the agent at URL with profile_options (runs, warmup, threads,
    batch, per_op); returns the local profile's JSON plus `remote` (url, host, agent_version,
    queue figures). The agent checks the bundle's sha256; this side only packs it."""
    base = _base_url(url)
    token = read_token(token_file)
    query = urllib.parse.urlencode(encode_options(profile_options))
    step = progress or (lambda _msg: None)
    limit = agent_info(base, token_file, timeout).get("max_upload_bytes")
    with tempfile.TemporaryDirectory(prefix="layerwise-remote-") as tmp:
        archive = Path(tmp) / "bundle.tar.gz"
        size = pack_bundle(bundle_dir, archive)
        if limit is not None and size > limit:
            raise RemoteError(f"the bundle archive is {size / (1 << 20):.1f} MB, over the "
                              f"agent's upload limit of {limit / (1 << 20):g} MB; start the "
                              "agent with a larger --max-upload-mb", 413)
        step(f"uploading {size / (1 << 20):.1f} MB to {base}")
        with open(archive, "rb") as body:
            req = urllib.request.Request(
                f"{base}{API}/profile?{query}", data=body, method="POST",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/gzip",
                         "Content-Length": str(size)})
            with _open(req, base, token_file, timeout) as resp:
                result = _read_events(resp, base, step)
    result["bundle"] = str(Path(bundle_dir).resolve())
    result.setdefault("remote", {})["url"] = base
    return result


def check_remote_options(remote: str | None, token_file: str | None,
                         baseline: str | None = None) -> None:
    """Refuse option mixes `profile --remote` cannot serve (call before any work)."""
    if remote is None:
        if token_file is not None:
            raise LayerwiseError("--token-file goes with --remote URL")
        return
    if token_file is None:
        raise LayerwiseError("--remote needs --token-file (the file the agent was started with)")
    if baseline is not None:
        raise LayerwiseError("--baseline runs torch here and cannot be timed on the remote "
                             "device; drop --baseline or --remote")
    _base_url(remote)


__all__ = ["RemoteError", "agent_info", "check_remote_options", "remote_profile"]
