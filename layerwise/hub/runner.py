"""Runs the hub's queued jobs, each as the `layerwise` command in its own process group.

A job's folder (data dir/jobs/ID) receives its bundle or analysis, `log.txt` (the command's
progress and errors) and `result.json` (its --json output). The job ends `done` when the
command exits 0, `failed` with the command's own one-line error otherwise, `cancelled` when
cancelled (its process group is killed). Jobs are taken oldest first from the database, so a
queued job outlives a restart; a job that was running when the server stopped is marked
failed with the reason on the next start, never left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

from layerwise.hub.jobspec import JOB_DIR, Hub
from layerwise.hub.store import FINAL

INTERRUPTED = "the server stopped while this job ran; submit it again"


class Runner:
    """Takes queued jobs from the store and runs up to `slots` at once."""

    def __init__(self, hub: Hub, slots: int = 1) -> None:
        self.hub, self.slots = hub, max(1, slots)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        """Fail the jobs a previous server left running (killing their commands, if a
        killed server left them behind), then start the workers."""
        for job in self.hub.store.fail_interrupted(INTERRUPTED):
            if job["pid"] and _is_job_command(job["pid"], self.hub.job_dir(job["id"])):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job["pid"], signal.SIGKILL)
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.slots)]

    async def stop(self) -> None:
        """Kill running jobs (marked failed: the server stopped) and the workers."""
        for job_id, proc in list(self.procs.items()):
            self.hub.store.finish_job(job_id, "failed", error=INTERRUPTED)
            _kill(proc)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def submitted(self) -> None:
        self.wake.set()

    def cancel(self, job_id: int) -> bool:
        """Cancel a queued or running job; False if it had already ended."""
        job = self.hub.store.job(job_id)
        if job is None or job["state"] in FINAL:
            return False
        self.hub.store.finish_job(job_id, "cancelled", error="cancelled")
        if job_id in self.procs:
            _kill(self.procs[job_id])
        return True

    async def _work(self) -> None:
        while True:
            job = self.hub.store.next_queued()
            if job is None:
                self.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=1.0)
                continue
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a job's failure must not stop the queue
                self.hub.store.finish_job(job["id"], "failed",
                                          error=f"the hub could not run it: {e}")

    async def _run(self, job: dict) -> None:
        folder = self.hub.job_dir(job["id"])
        if folder.exists():  # left by a job id reused after the database was replaced
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        argv = [a.replace(JOB_DIR, str(folder)) for a in job["argv"]]
        env = {**os.environ, "LAYERWISE_PROGRESS": "stderr", "HF_HUB_OFFLINE": "1"}
        log_path, result_path = folder / "log.txt", folder / "result.json"
        with open(log_path, "ab") as log, open(result_path, "wb") as out:
            log.write(f"$ layerwise {' '.join(argv[3:])}\n".encode())
            log.flush()
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=out, stderr=log, stdin=asyncio.subprocess.DEVNULL, env=env,
                cwd=folder, start_new_session=True)
            self.procs[job["id"]] = proc
            self.hub.store.set_pid(job["id"], proc.pid)
            t0 = time.monotonic()
            try:
                code = await proc.wait()
            finally:
                self.procs.pop(job["id"], None)
            log.write(f"exit {code} after {time.monotonic() - t0:.1f} s\n".encode())
        if code == 0:
            try:
                result = json.loads(result_path.read_text())
            except ValueError:
                self.hub.store.finish_job(job["id"], "failed",
                                          error="the command printed no JSON result")
                return
            self.hub.store.finish_job(job["id"], "done", result=result)
        else:
            self.hub.store.finish_job(job["id"], "failed", error=last_error(log_path, code))


def last_error(log_path: Path, code: int) -> str:
    """The command's own one-line error from its log, else how it ended."""
    lines = log_path.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith("layerwise: "):
            return line[len("layerwise: "):][:500]
    return f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"


def _is_job_command(pid: int, folder: Path) -> bool:
    """Whether PID is still a layerwise command working in FOLDER (not a reused pid)."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return Path(cwd) == folder


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
