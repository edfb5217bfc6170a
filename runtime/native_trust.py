"""Which native libraries this machine may load: a TVM bundle's model is a shared library,
and loading one runs its code (its constructors, then its kernels). A sha256 in a manifest
proves nothing about who wrote it, so a library loads only when it was compiled on this
machine (its sha256 recorded in the trust file at compile time) or when the user says they
trust its source (`--trust-native`; the agent's `--allow-native`).

The trust file is `$LAYERWISE_TRUST`, else `~/.layerwise/trusted-native`: one sha256 a line,
appended under an exclusive lock, created 0600. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from layerwise.base.errors import BundleError

TRUST_HINT = ("load native code only from a source you trust: pass --trust-native (the "
              "agent: start it with --allow-native), or compile the bundle on this machine")


def trust_file() -> Path:
    """$LAYERWISE_TRUST, else ~/.layerwise/trusted-native."""
    return Path(os.environ.get("LAYERWISE_TRUST") or
                Path.home() / ".layerwise" / "trusted-native")


def _digest(path: Path) -> str:
    from layerwise.runtime.bundle import sha256_file

    return sha256_file(path)


def trust(path: Path) -> str:
    """Record the library at `path` as compiled here; returns its sha256. A trust file that
    cannot be written leaves the library untrusted (loading it then needs --trust-native)."""
    digest = _digest(path)
    f = trust_file()
    with contextlib.suppress(OSError):
        f.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as out:
            fcntl.flock(out, fcntl.LOCK_EX)
            out.write(digest + "\n")
    return digest


def is_trusted(path: Path) -> bool:
    """Whether the library's sha256 is in the trust file (a file others may write counts
    for nothing: anyone could have added to it)."""
    f = trust_file()
    try:
        st = f.stat()
        if st.st_mode & 0o022 or st.st_uid != os.geteuid():
            return False
        known = set(f.read_text().split())
    except (OSError, UnicodeDecodeError):
        return False
    return _digest(path) in known


def check_native(path: Path, allow: bool) -> None:
    """Refuse to load the native library `path` unless `allow` or it was compiled here."""
    if not allow and not is_trusted(path):
        raise BundleError(f"{path.name} is native code (a compiled library) that was not "
                          f"compiled on this machine; {TRUST_HINT}")
