"""What the device agent and its client share: the token file, the bundle archive (packed on
the workstation, unpacked on the device with no member escaping its folder), the profile
options sent as query parameters, and the event lines of a job's reply.

Standard library only (plus layerwise.base.errors, and the bundle reader when packing), so both
sides stay small and torch-free.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from layerwise.base.errors import LayerwiseError

API = "/v1"
MANIFEST = "manifest.json"
MIN_TOKEN_CHARS = 16
MAKE_TOKEN = ('python -c "import secrets; print(secrets.token_urlsafe(32))" > FILE '
              '&& chmod 600 FILE')
MAX_MEMBERS = 10_000

# name -> (parser, default); the client sends these as query parameters, the agent reads them.
PROFILE_OPTIONS: dict[str, tuple[type, Any]] = {
    "runs": (int, None),  # the profile's own default (100 runs; 3 generations)
    "warmup": (int, 10),
    "threads": (int, 0),
    "batch": (int, None),
    "per_op": (bool, False),
    "power_mode": (str, None),
    "prompt_len": (int, 128),
    "new_tokens": (int, 128),
}


class ArchiveError(LayerwiseError):
    """An uploaded archive that is not a plain tar.gz of files inside one folder."""


def read_token(path: str | Path | None) -> str:
    """The token in FILE (surrounding whitespace removed); refuses a missing or short one, and
    on POSIX one that group or others may read or write (as ssh refuses a loose key)."""
    if not path:
        raise LayerwiseError(f"--token-file is required; create one with: {MAKE_TOKEN}")
    p = Path(path)
    try:
        token = p.read_text().strip()
        mode = p.stat().st_mode
    except (OSError, UnicodeDecodeError) as e:
        raise LayerwiseError(f"cannot read the token file {p} ({e.__class__.__name__}); "
                             f"create one with: {MAKE_TOKEN}") from e
    if os.name == "posix" and mode & 0o077:
        raise LayerwiseError(f"the token file {p} is open to other users (mode "
                             f"{stat.S_IMODE(mode):03o}); chmod 600 {p}")
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise LayerwiseError(f"the token in {p} must be one word of at least {MIN_TOKEN_CHARS} "
                             f"characters; create one with: {MAKE_TOKEN}")
    return token


def _refuse_unknown(names) -> None:
    unknown = set(names) - set(PROFILE_OPTIONS)
    if unknown:
        raise LayerwiseError(f"unknown profile option(s) {sorted(unknown)}; "
                             f"valid: {sorted(PROFILE_OPTIONS)}")


def encode_options(options: dict[str, Any]) -> dict[str, str]:
    """Profile options as query parameters (None values left out); unknown names refused."""
    _refuse_unknown(options)
    out = {}
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "1" if value else "0"
        else:
            out[name] = value if PROFILE_OPTIONS[name][0] is str else str(int(value))
    return out


def decode_options(query: dict[str, str]) -> dict[str, Any]:
    """Query parameters back to profile options; a bad value is a LayerwiseError naming it."""
    _refuse_unknown(query)
    out = {}
    for name, (kind, default) in PROFILE_OPTIONS.items():
        raw = query.get(name)
        if raw is None:
            out[name] = default
        elif kind is str:
            out[name] = raw
        elif kind is bool:
            if raw not in ("0", "1"):
                raise LayerwiseError(f"option {name} must be 0 or 1, got {raw!r}")
            out[name] = raw == "1"
        else:
            try:
                out[name] = int(raw)
            except ValueError:
                raise LayerwiseError(f"option {name} must be an integer, got {raw!r}") from None
    if (out["runs"] is not None and out["runs"] < 1) or out["warmup"] < 0 \
            or out["threads"] < 0 or out["prompt_len"] < 1 or out["new_tokens"] < 1:
        raise LayerwiseError("runs, prompt_len and new_tokens must be >= 1, warmup >= 0 and "
                             "threads >= 0")
    if out["batch"] is not None and out["batch"] < 1:
        raise LayerwiseError(f"batch must be >= 1, got {out['batch']}")
    return out


def _bundle_names(bundle_dir: Path) -> list[str]:
    """manifest.json and every file the manifest lists, checked as `open_bundle` checks them
    (inside the bundle, no links, model and inputs listed)."""
    from layerwise.runtime.bundle import open_bundle

    manifest = open_bundle(bundle_dir, check=False).manifest
    return [MANIFEST, *(f["name"] for f in manifest["files"])]


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644 if info.isreg() else 0o755
    return info


# How much of an oversized streamed upload is read and dropped before answering 413, so the
# client can read the answer (closing on unread data would reset the connection).
DRAIN_BYTES = 8 << 20


async def receive_upload(request: Any, dest: Path, limit: int) -> bool:
    """Stream a server request's body to DEST; False when it is over `limit` bytes (then
    what was written is partial, and a little more of the body was read and dropped so the
    client can read the 413 the caller answers)."""
    size = 0
    with open(dest, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                break
            f.write(chunk)
    if size <= limit:
        return True
    dropped = 0
    async for chunk in request.stream():
        dropped += len(chunk)
        if dropped > DRAIN_BYTES:
            break
    return False


def pack_bundle(bundle_dir: str | Path, dest: Path) -> int:
    """Write the bundle's manifest and listed files to DEST as tar.gz; returns its size."""
    d = Path(bundle_dir)
    names = _bundle_names(d)
    with tarfile.open(dest, "w:gz", compresslevel=6, dereference=True) as tar:
        for name in names:
            tar.add(d / name, arcname=name, recursive=False, filter=_plain)
    return dest.stat().st_size


def _check_member(m: tarfile.TarInfo) -> None:
    name = m.name
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or "\x00" in name:
        raise ArchiveError(f"archive member {name!r} points outside the bundle folder; "
                           "upload a bundle packed by `layerwise profile --remote`")
    if not (m.isreg() or m.isdir()):
        kind = "link" if (m.issym() or m.islnk()) else "device or special file"
        raise ArchiveError(f"archive member {name!r} is a {kind}; a bundle archive holds "
                           "plain files only")


def unpack_archive(archive: Path, dest: Path, max_bytes: int) -> None:
    """Unpack a tar.gz into DEST, refusing absolute or `..` paths, links, device files, a name
    twice, more than MAX_MEMBERS members or more than MAX_BYTES unpacked; tarfile's 'data'
    filter (where Python has it) checks the same again while extracting. DEST must not exist
    yet."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members, total, seen = [], 0, set()
            for m in tar:
                _check_member(m)
                if PurePosixPath(m.name) in seen:
                    raise ArchiveError(f"archive member {m.name!r} appears twice; upload a "
                                       "bundle packed by `layerwise profile --remote`")
                seen.add(PurePosixPath(m.name))
                total += m.size
                members.append(m)
                if total > max_bytes or len(members) > MAX_MEMBERS:
                    raise ArchiveError(f"the archive unpacks to more than {max_bytes >> 20} MB "
                                       f"or {MAX_MEMBERS} files; it is not a bundle")
            dest.mkdir(mode=0o700)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python before 3.11.4 (Debian bookworm's, Raspberry Pi OS's 3.11.2)
                _extract_plain(tar, members, dest)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise ArchiveError(f"the upload is not a readable tar.gz bundle archive "
                           f"({e.__class__.__name__}: {first})") from e


def _extract_plain(tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path) -> None:
    """Write checked members (plain files and folders, relative paths) under dest as the
    'data' filter would: nothing outside dest, no file replaced, no set-id or world-writable
    bits."""
    root = dest.resolve()
    for m in members:
        target = (dest / m.name).resolve()
        if target != root and root not in target.parents:
            raise ArchiveError(f"archive member {m.name!r} points outside the bundle folder; "
                               "upload a bundle packed by `layerwise profile --remote`")
        if m.isdir():
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            continue
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        src = tar.extractfile(m)
        with src, open(target, "xb") as out:
            shutil.copyfileobj(src, out)
        target.chmod((m.mode & 0o755) | 0o600)


def event_line(event: dict[str, Any]) -> bytes:
    """One job event as a JSON line (the reply of POST /v1/profile is a stream of these)."""
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"
