"""TVM runner: load a Relax VM library (model.so) with its model.json sidecar (input and
output names, dtypes, shapes) and run named numpy inputs on the CPU. No torch.

Per-op times come from the VM's instrument hook: wall time of every kernel call, grouped by
the fused kernel's name without its numeric suffix.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from layerwise.base.errors import BundleError, TargetError
from layerwise.runtime.batching import run_in_slices, slice_step
from layerwise.runtime.native_trust import check_native


def host_cores() -> int:
    """The CPUs this process may run on (its affinity mask, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def allow_threads(threads: int = 0) -> int:
    """Raise TVM's thread-pool ceiling to `threads` (0: every core) and return the count a VM
    should use. TVM reads TVM_NUM_THREADS once, when a thread first makes its pool, and
    without it halves the cores on x86 for hyper-threading (one thread on a two-vCPU
    machine). So this runs before any VM is made; TVM_NUM_THREADS, when set, still caps a
    default run."""
    env = int(os.environ.get("TVM_NUM_THREADS") or 0)
    n = int(threads) or env or host_cores()
    if n > env:
        os.environ["TVM_NUM_THREADS"] = str(n)
    return n


class TvmRunner:
    """One Relax VM on the host CPU, on `threads` threads (0: TVM_NUM_THREADS when set,
    else every core, as ONNX Runtime and OpenVINO use)."""

    name = "tvm"

    def __init__(self, model: Path, threads: int = 0, per_op: bool = False,
                 trust_native: bool = False) -> None:
        try:
            import tvm
            from tvm import relax
        except ImportError as e:
            raise TargetError("Apache TVM is not installed: pip install 'layerwise[tvm]'") from e
        model = Path(model)
        check_native(model, trust_native)
        sidecar = model.with_suffix(".json")
        if not sidecar.is_file():
            raise BundleError(f"{model.name} has no {sidecar.name} beside it; re-create the "
                              "bundle")
        spec = json.loads(sidecar.read_text())
        threads = allow_threads(threads)
        tvm.get_global_func("runtime.config_threadpool")(0, threads)
        try:
            lib = tvm.runtime.load_module(str(model))
            self.vm = relax.VirtualMachine(lib, tvm.cpu())
        except Exception as e:  # noqa: BLE001 - TVM raises its own types
            raise BundleError(f"TVM cannot load {model.name}: "
                              f"{str(e).strip().splitlines()[-1][:200]}; re-create the bundle "
                              "on a machine of this architecture") from e
        self._tvm = tvm
        self._fn_name = spec.get("function", "main")
        self._fn = self.vm[self._fn_name]
        self._inputs = spec["inputs"]
        self._shapes = {s["name"]: tuple(s["shape"]) for s in self._inputs}
        self.input_names = [s["name"] for s in self._inputs]
        self.output_names = [s["name"] for s in spec["outputs"]]
        self.threads = threads
        self.version = tvm.__version__
        self._lib, self._per_op, self._last = lib, per_op, None
        self._ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        self._start: list[float] = []

    def _instrument(self, func, symbol: str, before: bool, ret, *args) -> int:
        if before:
            self._start.append(time.perf_counter())
        elif self._start:
            rec = self._ops[re.sub(r"\d+$", "", str(symbol)) or str(symbol)]
            rec[0] += (time.perf_counter() - self._start.pop()) * 1000.0
            rec[1] += 1
        return 0

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BundleError(f"missing inputs {missing}; the model takes {self.input_names}")
        step = slice_step(feeds, self._shapes)
        if step:
            return run_in_slices(self.run, feeds, step)
        args = []
        for spec in self._inputs:
            a = np.ascontiguousarray(feeds[spec["name"]], dtype=spec["dtype"])
            if len(a.shape) != len(spec["shape"]) or any(
                    isinstance(d, int) and d != n for d, n in zip(spec["shape"], a.shape)):
                raise BundleError(f"input {spec['name']} has shape {list(a.shape)}; this model "
                                  f"takes {spec['shape']}")
            args.append(self._tvm.runtime.tensor(a))
        if self._per_op:
            self._last = args
        try:
            out = self._fn(*args)
        except Exception as e:  # noqa: BLE001
            raise BundleError(f"TVM run failed: {str(e).strip().splitlines()[-1][:300]}") from e
        return _flatten(out)

    def op_profile(self, runs: int = 10) -> list[dict]:
        """Time per fused kernel over `runs` runs of the last inputs on a second VM with the
        instrument hook (so the timed runs carry no hook), slowest first."""
        if not self._per_op or self._last is None:
            return []
        from tvm import relax

        vm = relax.VirtualMachine(self._lib, self._tvm.cpu())
        vm.set_instrument(self._instrument)
        fn = vm[self._fn_name]
        for _ in range(runs):
            fn(*self._last)
        total = sum(v[0] for v in self._ops.values()) or 1.0
        return sorted(({"op": k, "total_ms": v[0], "calls": v[1], "share": v[0] / total}
                       for k, v in self._ops.items()), key=lambda d: -d["total_ms"])


def _flatten(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    return [a for item in out for a in _flatten(item)]
