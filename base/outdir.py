"""Output directories (a compile's bundle, an analyze report), written atomically.

The output is built in a temp dir beside OUT (`.OUT.tmp-*`) and renamed onto OUT at the end.
Each temp dir holds a marker file naming the process and host that own it, so a later write
to the same OUT removes the temp dirs of a process that is gone (one killed by SIGKILL, which
no handler sees); a temp dir without the marker is never touched. An existing OUT is replaced
only with `force`, and only when it is a previous output of the same kind or an empty
directory: a directory of other files, a regular file or a symlink is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Self

from layerwise.base.errors import LayerwiseError

MARKER = ".layerwise-partial"  # inside each temp dir: "layerwise-partial PID HOST"
_MAGIC = "layerwise-partial"


class AtomicDir:
    """Context manager: `d.dir` is the temp dir to fill, `d.publish()` renames it onto OUT;
    leaving the block without publishing removes it. The constructor refuses an OUT that
    cannot be written or must not be replaced, so it can run before any work."""

    error: type[LayerwiseError] = LayerwiseError  # what refusals raise

    def __init__(self, out: str | Path, force: bool, is_ours: Callable[[Path], bool],
                 kind: str) -> None:
        self.out = Path(os.path.abspath(out))  # "." and ".." have a name and a parent
        self.force = force
        self.is_ours = is_ours
        self.kind = kind  # what an output of this kind is called: "a layerwise bundle"
        self.dir: Path | None = None
        self.check()

    def check(self) -> None:
        """Refuse a symlink, a file, a directory that is neither ours nor empty (without
        `force`: any existing OUT), and a place where no directory can be made."""
        out = self.out
        only = f"--force replaces only {self.kind} or an empty directory"
        if out.is_symlink():
            raise self.error(f"{out} is a symlink: choose another --out ({only})")
        if out.exists() and not out.is_dir():
            raise self.error(f"{out} exists and is not a directory: choose another --out "
                             f"({only})")
        if out.exists() and not (self.is_ours(out) or _empty(out)):
            raise self.error(f"{out} already exists and is not {self.kind}: choose another "
                             f"--out or move it aside ({only})")
        if out.exists() and not self.force:
            raise self.error(f"{out} already exists: choose another --out or pass --force")
        _check_writable(out, self.error)

    def __enter__(self) -> Self:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self.error(f"cannot write --out {self.out}: cannot create "
                             f"{self.out.parent} ({e.strerror or e})") from e
        sweep(self.out)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        _mark(self.dir)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        return False

    def publish(self) -> None:
        """Move the temp dir onto OUT (a previous output is moved aside, then removed)."""
        self.check()  # OUT may have changed while the work ran
        old = None
        if self.out.exists():
            # marked first, so that a kill between the renames leaves a dir `sweep` removes
            with contextlib.suppress(OSError):
                _mark(self.out)
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-old-",
                                        dir=self.out.parent))
            os.rename(self.out, old)  # onto the empty dir just made
        os.rename(self.dir, self.out)
        self.dir = None
        (self.out / MARKER).unlink(missing_ok=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def is_analysis(d: Path) -> bool:
    """Whether d holds an analyze output (an importance.json with a ranking and scores)."""
    f = d / "importance.json"
    try:
        imp = json.loads(f.read_text()) if f.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(imp, dict) and {"spec", "ranking", "scores"} <= imp.keys()


def sweep(out: str | Path) -> list[Path]:
    """Remove the temp dirs of `out` whose marker names a process of this host that is gone;
    returns them. Temp dirs without a readable marker, or of a live process, are kept."""
    out = Path(out)
    prefix = f".{out.name}.tmp-"
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return []
    removed = []
    for d in entries:
        if not d.name.startswith(prefix) or d.is_symlink() or not d.is_dir():
            continue
        owner = _owner(d)
        if owner is None or owner[1] != socket.gethostname() or _alive(owner[0]):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _mark(d: Path) -> None:
    (d / MARKER).write_text(f"{_MAGIC} {os.getpid()} {socket.gethostname()}\n")


def _owner(d: Path) -> tuple[int, str] | None:
    """(pid, host) from d's marker, or None without a well-formed one."""
    m = d / MARKER
    if m.is_symlink() or not m.is_file():
        return None
    try:
        with open(m, "rb") as f:
            magic, pid, host = f.read(512).decode().split()
        return (int(pid), host) if magic == _MAGIC and int(pid) > 0 else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _empty(d: Path) -> bool:
    try:
        return not any(d.iterdir())
    except OSError:
        return False


def _check_writable(out: Path, error: type[LayerwiseError] = LayerwiseError) -> None:
    """Refuse an OUT under a regular file, or where no directory can be created (a read-only
    folder or file system, /proc): a directory is made and removed in the nearest existing
    folder above OUT."""
    above = out.absolute().parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise error(f"cannot write --out {out}: {above} is a file, not a directory; "
                    "choose another --out")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".layerwise-probe-", dir=above))
    except OSError as e:
        raise error(f"cannot write --out {out}: no directory can be created in "
                    f"{above} ({e.strerror or e}); choose a writable --out") from e
