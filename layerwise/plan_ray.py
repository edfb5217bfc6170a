"""The plan search's candidates on a Ray cluster: `compile --max-drop … --executor ray` (a
local cluster, started and stopped here unless one is already up) or `ray://HOST:PORT`.

The search (compiler/plan/search.py) still decides alone and in its own order; before each
decision it names the structural plans and candidates it will or may ask for next, and this
executor starts those at once as Ray tasks (one CPU each), so the cluster shrinks, heals,
emits, verifies and times them side by side. Results are handed to the search only when it
asks for them; what it stops wanting is cancelled. Given the same measurements it makes the
same choice as in-process.

What travels: the lifted IR (its .pt2 and sidecars as bytes), the data batches, the judge
(with the original model's reference outputs computed here) and the options go into the
object store once; each worker process rebuilds a `Search` from them on its first task and
keeps it for the next. A shrunk IR is one task's result (bytes in the object store) that
the quality and measure tasks of that plan take as input, and the chosen plan's comes back
here for the final build. A ray:// cluster needs layerwise installed on its workers.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.plan import Candidate
from layerwise.plan import Search

RAY_EXTRA = "pip install 'layerwise[ray]'"

# this worker process's search: (context id, Search), the latest one only
_WORKER: dict = {}


class RayExecutor:
    """Shrinks, builds and measures the candidates of `s` on Ray (see the module docstring).

    `address`: "ray" (a local cluster of os.cpu_count() CPUs, unless Ray is already
    initialised here) or "ray://HOST:PORT". Returns once one worker per CPU holds the
    search (`start_s`: how long that took). Use as a context manager: leaving it cancels
    what is still running and stops a cluster it started."""

    def __init__(self, s: Search, address: str) -> None:
        t0 = time.perf_counter()
        self.s = s
        self.address = address
        self.shrinks: dict = {}  # (drop, prune) -> ref of the shrunk IR's bytes
        self.qualities: dict = {}  # (drop, prune) -> ref of its torch quality
        self.judged: set = set()  # plans whose shrunk IR comes from their quality's task
        self.measures: dict = {}  # plan key -> ref of (candidate, build seconds, worker)
        self.asked: set = set()  # keys the search has asked for (never cancelled)
        self.processes: set[str] = set()
        self.tasks = self.cancelled = 0
        self.ray = _ray(address)
        self.started = _connect(self.ray, address)
        try:
            self._start(s)
        except BaseException:
            self.close()
            raise
        self.start_s = time.perf_counter() - t0

    def _start(self, s: Search) -> None:
        """Ship the search and have one worker per CPU load it."""
        ray = self.ray
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        self.ctx = (uuid.uuid4().hex, [ray.put(_payload(s))])  # nested: fetched once per worker
        task = ray.remote(num_cpus=1)
        self._shrink, self._measure = task(_shrink_task), task(_measure_task)
        self._layers = task(_layers_task)
        self._quality = ray.remote(num_cpus=1, num_returns=2)(_quality_task)
        warm = ray.remote(num_cpus=1)(_warm_task)
        try:
            ray.get([warm.remote(*self.ctx) for _ in range(self.workers)])
        except ray.exceptions.RayTaskError as e:
            raise LayerwiseError(f"--executor {self.address}: the Ray workers cannot load the "
                                 f"search ({type(e.cause).__name__}: "
                                 f"{(str(e.cause).splitlines() or [''])[0][:160]}); install "
                                 "layerwise where they run") from e

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- what the search calls

    def ahead(self, plans: list, candidates: list[Candidate]) -> None:
        """Start `plans`' qualities and `candidates`' measurements; cancel those started for
        an earlier call that this one no longer names."""
        # a quality's task stays while a candidate named needs the IR it shrinks
        want = ({_key(d, p) for d, p in plans} | {_plan(c) for c in candidates}
                | {_key(c.drop, c.prune) for c in candidates})
        for table in (self.qualities, self.measures):
            for key, ref in list(table.items()):
                if key in want or key in self.asked:
                    continue
                done, _ = self.ray.wait([ref], timeout=0)
                if not done:  # finished ones stay: the search may yet ask
                    self.ray.cancel(ref)
                    del table[key]
                    self.cancelled += 1
                    if key in self.judged:
                        self.judged.discard(key)
                        del self.shrinks[key]
        for drop, prune in plans:
            self._quality_ref(drop, prune)
        for c in candidates:
            self._measure_ref(c)

    def torch_quality(self, drop: list[str], prune: float | None = None) -> float:
        self.asked.add(_key(drop, prune))
        return self._get(self._quality_ref(drop, prune))

    def measure(self, cand: Candidate) -> Candidate:
        self.asked.add(_plan(cand))
        out, self.s.build_s, worker = self._get(self._measure_ref(cand))
        self.processes.add(worker)
        return out

    def layer_table(self) -> Callable[[], list[dict]]:
        """Start the per-layer int8 sensitivity on a worker; the function returns it."""
        ref = self._submit(self._layers, self.s.importance)
        return lambda: self._get(ref)

    def shrunk(self, drop: list[str], prune: float | None = None):
        """The shrunk IR of (drop, prune) as a worker built it (the original when nothing is
        removed)."""
        ref = self._shrink_ref(drop, prune)
        return self.s.ir if ref is None else _ir_from(self._get(ref))

    def executor_record(self) -> dict:
        """Which cluster, its CPUs (the workers measuring side by side), the seconds to start
        them, the worker processes that measured candidates, the tasks started and those
        cancelled unused."""
        where = self.address if self.address != "ray" else (
            "a local Ray cluster started for this compile" if self.started
            else "the Ray cluster this process had initialised")
        return {"name": "ray", "address": where, "workers": self.workers,
                "start_s": self.start_s, "worker_processes": len(self.processes),
                "tasks": self.tasks, "cancelled": self.cancelled}

    def close(self) -> None:
        """Cancel what the search did not ask for; stop the cluster if it was started here."""
        for table in (self.qualities, self.measures, self.shrinks):
            for key, ref in table.items():
                if ref is not None and key not in self.asked:
                    self.ray.cancel(ref)
        self.qualities, self.measures, self.shrinks = {}, {}, {}
        if self.started:
            self.ray.shutdown()
            self.started = False

    # ---------------------------------------------------------------- tasks

    def _submit(self, fn, *args):
        self.tasks += 1
        return fn.remote(*self.ctx, *args)

    def _shrink_ref(self, drop: list[str], prune: float | None):
        """The ref of (drop, prune)'s shrunk IR, started once; None for the original."""
        key = _key(drop, prune)
        if not drop and not prune:
            return None
        if key not in self.shrinks:
            self.shrinks[key] = self._submit(self._shrink, list(drop), prune)
        return self.shrinks[key]

    def _quality_ref(self, drop: list[str], prune: float | None):
        """The ref of (drop, prune)'s torch quality; one task shrinks and judges it unless
        its shrunk IR is already on the way (that task's IR is then the plan's)."""
        key = _key(drop, prune)
        if key not in self.qualities:
            have = self.shrinks.get(key)
            self.qualities[key], made = self._submit(self._quality, key, have)
            if have is None and (drop or prune):
                self.shrinks[key] = made
                self.judged.add(key)
        return self.qualities[key]

    def _measure_ref(self, cand: Candidate):
        key = _plan(cand)
        if key not in self.measures:
            self.measures[key] = self._submit(self._measure, cand,
                                              self._shrink_ref(cand.drop, cand.prune))
        return self.measures[key]

    def _get(self, ref):
        """The task's result; a worker's LayerwiseError is raised as itself."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, LayerwiseError):
                raise e.cause from None
            raise


# -------------------------------------------------------------------- connecting

def _ray(address: str):
    try:
        import ray
    except ImportError as e:
        raise LayerwiseError(f"--executor {address} needs Ray: {RAY_EXTRA}") from e
    return ray


def _connect(ray, address: str) -> bool:
    """Initialise Ray for `address` unless it already is; whether it was started here."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address == "ray":
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise LayerwiseError(f"--executor {address}: cannot start or reach the Ray cluster: "
                             f"{(str(e).splitlines() or [''])[0][:200]}") from e
    return True


# -------------------------------------------------------------------- what travels

def _key(drop: list[str], prune: float | None) -> tuple:
    return (tuple(drop), prune)


def _plan(c: Candidate) -> tuple:
    return (tuple(c.drop), c.prune, c.precision, tuple(c.keep_fp32))


def _payload(s: Search) -> dict:
    return {"spec": s.spec, "ir": _ir_bytes(s.ir), "opts": s.opts, "judge": s.judge,
            "batches": s.analysis_batches, "shrink": s.shrink}


def _ir_bytes(ir) -> dict[str, bytes]:
    """The IR as the files IR.save writes, by name."""
    with tempfile.TemporaryDirectory() as tmp:
        ir.save(Path(tmp) / "m.pt2")
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


def _ir_from(files: dict[str, bytes]):
    from layerwise.compiler.ir import IR

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return IR.load(Path(tmp) / "m.pt2")


# -------------------------------------------------------------------- on the workers

def _quiet(_: str) -> None:
    pass


def _search(ctx_id: str, box: list) -> Search:
    """This worker's Search for context `ctx_id`, rebuilt from the object store once."""
    if _WORKER.get("id") != ctx_id:
        import ray
        import torch

        torch.set_num_threads(1)  # one CPU per task
        p = ray.get(box[0])
        _WORKER.clear()
        _WORKER.update(id=ctx_id, search=Search(p["spec"], _ir_from(p["ir"]), p["opts"],
                                                p["batches"], p["judge"], _quiet,
                                                shrink=p["shrink"]))
    return _WORKER["search"]


def _with_shrunk(s: Search, drop: list[str], prune: float | None,
                 files: dict[str, bytes] | None) -> Search:
    if files is not None and not s.has_shrunk(drop, prune):
        s.remember(drop, prune, _ir_from(files))
    return s


def _worker_id() -> str:
    import ray

    return f"{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"


def _warm_task(ctx_id: str, box: list) -> str:
    _search(ctx_id, box)
    return _worker_id()


def _shrink_task(ctx_id: str, box: list, drop: list[str], prune: float | None) -> dict:
    return _ir_bytes(_search(ctx_id, box).shrunk(drop, prune))


def _quality_task(ctx_id: str, box: list, key: tuple, files: dict | None) -> tuple:
    """(the torch quality of plan `key`, its shrunk IR's bytes when shrunk here, else None)."""
    drop, prune = list(key[0]), key[1]
    s = _with_shrunk(_search(ctx_id, box), drop, prune, files)
    q = s.torch_quality(drop, prune)
    return q, None if files is not None or not (drop or prune) else _ir_bytes(
        s.shrunk(drop, prune))


def _measure_task(ctx_id: str, box: list, cand: Candidate, files: dict | None) -> tuple:
    s = _with_shrunk(_search(ctx_id, box), cand.drop, cand.prune, files)
    out = s.measure(cand)
    return out, s.build_s, _worker_id()


def _layers_task(ctx_id: str, box: list, importance: dict) -> list[dict]:
    s = _search(ctx_id, box)
    s.importance = importance
    return s.layer_table()
