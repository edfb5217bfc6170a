"""The device agent's work dir: one agent per folder, private to its user.

`claim(path)` creates the folder (mode 0700), refuses one that group or others can write or
that another user owns, takes an exclusive `flock` on its lock file (held while the agent
lives, released by the kernel if the agent is killed), and only then removes the `job-*`
folders left there: with the lock held they can only be a dead agent's.

Standard library only (plus layerwise.base.errors).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from layerwise.base.errors import LayerwiseError

JOB_PREFIX = "job-"
LOCK_NAME = ".agent.lock"

try:
    import fcntl
except ModuleNotFoundError:  # not POSIX: no lock, and so no sweep
    fcntl = None  # type: ignore[assignment]


class WorkDir:
    """A claimed work dir: `path`, and the lock file descriptor held until `release()`."""

    def __init__(self, path: Path, lock_fd: int | None) -> None:
        self.path = path
        self._fd = lock_fd

    @property
    def held(self) -> bool:
        """Whether this agent still holds the work dir's lock."""
        return self._fd is not None

    def sweep(self) -> int:
        """Remove the `job-*` folders in the work dir (all stale or this agent's own, since
        the lock is held); returns how many. Does nothing without the lock."""
        if not self.held:
            return 0
        n = 0
        for d in self.path.glob(f"{JOB_PREFIX}*"):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
        return n

    def __enter__(self) -> WorkDir:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Drop the lock (the lock file stays: removing it would race another agent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _check_private(path: Path) -> None:
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise LayerwiseError(f"the agent's work dir {path} is not a folder; choose another "
                             "--work-dir")
    if st.st_uid != os.getuid():
        raise LayerwiseError(f"the agent's work dir {path} belongs to another user; choose "
                             "another --work-dir")
    if st.st_mode & 0o022:
        raise LayerwiseError(f"the agent's work dir {path} can be written by other users "
                             f"(mode {stat.S_IMODE(st.st_mode):03o}); chmod 700 {path} or "
                             "choose another --work-dir")


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip() or "x")
        return f" (pid {pid})"
    return ""


def _lock(path: Path) -> int:
    lock_path = path / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise LayerwiseError(f"cannot open the agent's lock file {lock_path} "
                             f"({e.strerror or e}); choose another --work-dir") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _holder(fd)
        os.close(fd)
        raise LayerwiseError(f"another agent{holder} is using the work dir {path}; pick "
                             "another --work-dir or stop the other agent") from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def claim(path: str | Path) -> tuple[WorkDir, int]:
    """Create or check PATH, lock it for this agent, remove stale job folders; returns the
    work dir and how many folders were removed. A LayerwiseError says what to do instead."""
    p = Path(os.path.abspath(path))
    try:
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise LayerwiseError(f"cannot create the agent's work dir {p} ({e.strerror or e}); "
                             "choose another --work-dir") from e
    if os.name != "posix" or fcntl is None:
        return WorkDir(p, None), 0
    _check_private(p)
    work = WorkDir(p, _lock(p))
    return work, work.sweep()


__all__ = ["JOB_PREFIX", "LOCK_NAME", "WorkDir", "claim"]
