"""Calibrate `host`: time a set of single-op and small-layer models with ONNX Runtime and fit
the roofline's per-kind efficiency factors and overheads to them.

The peaks come first, from two of the cases: the best GEMM (FLOP/s) and a streaming add far
larger than the caches (bytes/s). Then every factor is fitted at once by robust least squares
on log(time), pulled gently towards the defaults so that a kind with little data keeps a sane
value. The calibration set never contains the models it is judged on (bench/predict.py).
Needs torch (export, for the op records) and onnxruntime (timing); stored as JSON under
$LAYERWISE_HOME (default ~/.layerwise) and reused while the CPU and onnxruntime stay the same.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from layerwise.base.errors import LayerwiseError
from layerwise.devices.cpu import cpu_flags, has_vnni, is_x86
from layerwise.devices.latency.calibration_set import Case, calibration_cases
from layerwise.devices.latency.graph_ops import COMPUTE, KIND_NAMES, ROW_FLOPS, OpRecord, op_records
from layerwise.devices.latency.roofline import (
    DEFAULT_COMPUTE,
    DEFAULT_MEMORY,
    Factors,
    Machine,
    parallel_slowdown,
    streams_dram,
    weight_tier,
)

FORMAT = "layerwise-calibration/3"
PRIOR_OVERHEAD_US = 10.0
PRIOR_INVOKE_US = 20.0
PRIOR_VIEW_US = 0.3
PRIOR_OVERLAP = 0.3
PRIOR_GRAIN_US = 20.0
PRIOR_WEIGHT_EFF = 1.0  # llc_weight_eff and dram_weight_eff
PRIOR_WEIGHT = 0.2  # pull of the defaults in log space, per factor
# onnxruntime's worker threads spin-wait after a run and take a core from the next session,
# so each case is timed after an idle pause
SETTLE_S = 0.3
REQUIRED = {"gemm-peak", "stream-add", "stream-add-cache"}


def home() -> Path:
    return Path(os.environ.get("LAYERWISE_HOME") or Path.home() / ".layerwise")


def calibration_path(threads: int = 0, clock: str = "wall") -> Path:
    """Where the host calibration for this thread count and clock is stored."""
    suffix = "" if (threads, clock) == (0, "wall") else f"-t{threads}-{clock}"
    return home() / f"calibration-host{suffix}.json"


def fingerprint() -> dict:
    """What a stored calibration is valid for: the CPU, its core count and onnxruntime."""
    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:
        ort_version = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "onnxruntime": ort_version}


def load_calibration(threads: int = 0, clock: str = "wall") -> dict | None:
    """The stored calibration when it matches this machine, else None."""
    path = calibration_path(threads, clock)
    if not path.exists():
        return None
    try:
        cal = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if cal.get("format") != FORMAT or cal.get("fingerprint") != fingerprint():
        return None
    return cal


# ---------------------------------------------------------------- measuring


def exported(module, inputs):
    """The module's exported program in Core ATen with a dynamic batch, as `layerwise.api.lift`
    makes it (exported at batch 2; the calibration runs it at the inputs' batch 1). A bundle
    with a dynamic batch computes its reshapes' shapes at run time, and so does the case."""
    import torch
    from torch.export import Dim

    doubled = tuple(torch.cat([t, t]) if t.dim() else t for t in inputs)
    dynamic = tuple({0: Dim.AUTO} if t.dim() else None for t in inputs)
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        dynamic = (dynamic,)  # forward(*xs): one spec, a tuple for the packed args
    return torch.export.export(module.eval(), doubled, dynamic_shapes=dynamic,
                               strict=False).run_decompositions()


def nchwc_block() -> int:
    """Channels per block of onnxruntime's NCHWc convolutions on this CPU (MLAS: 16 with
    AVX-512F, 8 with AVX2); 0 where it has no NCHWc kernels (no layout reorders)."""
    if not is_x86():
        return 0
    flags = cpu_flags()
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 0


def _records(program) -> list[OpRecord]:
    records, _ = op_records(program, None, batch=1, nchwc_block=nchwc_block())
    return records


def export_onnx(program, path: Path) -> None:
    """Write an exported program as ONNX with the exporter the onnx target uses (torch.onnx
    dynamo, optimized), its console chatter swallowed."""
    import torch

    log = io.StringIO()
    with (warnings.catch_warnings(), contextlib.redirect_stdout(log),
          contextlib.redirect_stderr(log)):
        warnings.simplefilter("ignore")
        torch.onnx.export(program, (), f=str(path), dynamo=True, optimize=True, verbose=False)


def ort_session(program, inputs, threads: int = 0):
    """An onnxruntime CPU session of an exported program and its feeds. The ONNX comes from
    the exporter the onnx target uses (torch.onnx dynamo, optimized), so the calibration
    times the same kernels a bundle runs (the legacy exporter, for one, keeps an nn.GRU as a
    single ONNX GRU where the bundle has its unrolled cells)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.onnx"
        export_onnx(program, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0: onnxruntime's default, as profiles run
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feeds = {n: t.numpy() for n, t in zip(names, inputs)}
    return sess, feeds


# "wall": elapsed time (what a user sees; other processes on the CPU inflate it); "cpu": CPU
# time of the calling thread, which a single-threaded onnxruntime session runs on, so other
# processes barely disturb it (use with threads=1)
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_runs(run, budget_s: float, min_runs: int = 5, max_runs: int = 200,
              clock: str = "wall") -> float:
    """Median seconds of run() over at least `min_runs` runs or `budget_s` of wall time."""
    tick = CLOCKS[clock]
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs
                                     or time.perf_counter() - start < budget_s):
        t0 = tick()
        run()
        times.append(tick() - t0)
    return float(np.median(times))


def measure(cases: list[Case], rounds: int = 9, progress=lambda _: None, threads: int = 0,
            clock: str = "wall") -> list[dict]:
    """Records and seconds of each case. The cases are timed in interleaved rounds and each
    keeps its best round's median: other processes sharing the CPU slow some rounds, and
    interleaving spreads that over all cases instead of a few."""
    import torch

    built = []
    torch.manual_seed(0)
    for i, case in enumerate(cases):
        progress(f"calibration {i + 1}/{len(cases)}: exporting {case.name}")
        with torch.no_grad():
            if case.exported is not None:
                program, inputs = case.exported()
            else:
                module, inputs = case.build()
                program = exported(module, inputs)
            records = _records(program)
            sess, feeds = ort_session(program, inputs, threads)
        for _ in range(3):
            sess.run(None, feeds)
        built.append((case.name, records, lambda s=sess, f=feeds: s.run(None, f)))
    best = best_rounds([run for _, _, run in built], rounds, budget_s=0.05, threads=threads,
                       clock=clock, progress=progress)
    return [{"name": name, "seconds": t, "records": records}
            for (name, records, _), t in zip(built, best)]


def best_rounds(runs: list, rounds: int, *, budget_s: float, min_runs: int = 5,
                threads: int = 0, clock: str = "wall", progress=lambda _: None) -> list[float]:
    """Each run's best round median, in seconds, the runs timed in interleaved rounds: a
    slow spell of a shared CPU slows one round of every run instead of every round of a
    few. `threads` other than 1 waits SETTLE_S before each run's slice, so the previous
    onnxruntime session's spinning workers park."""
    best = [math.inf] * len(runs)
    for r in range(rounds):
        progress(f"calibration: timing round {r + 1}/{rounds}")
        for i, run in enumerate(runs):
            if threads != 1:
                time.sleep(SETTLE_S)
            best[i] = min(best[i], time_runs(run, budget_s, min_runs=min_runs, clock=clock))
    return best


def cache_mb(level: int | None = None) -> float:
    """Size in MiB of the largest CPU cache (or of the cache at `level`, e.g. 2 for L2) of
    core 0 (sysfs), 0 when unknown."""
    sizes = []
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if level is not None and int((d / "level").read_text()) != level:
                continue
            text = (d / "size").read_text().strip()
            mult = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(text[-1:], 1 / 2**20)
            sizes.append(float(text.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            continue
    return max(sizes, default=0.0)


# ---------------------------------------------------------------- fitting

_CKINDS = (*KIND_NAMES, "fused", "epilogue", "row")


class _Design:
    """The cases' op records as arrays: a vectorised predict.op_time_s for a machine whose
    peak and bandwidths are fixed (measured) and whose factors are being fitted."""

    def __init__(self, measured: list[dict], m: Machine) -> None:
        case, kind, flops, mem, fused, dram, w_llc, w_dram, outs, rows = ([] for _ in range(10))
        cache = (m.cache_bandwidth_gbs or m.bandwidth_gbs) * 1e9
        bw = m.bandwidth_gbs * 1e9
        self.views = np.zeros(len(measured))
        for i, meas in enumerate(measured):
            tier = weight_tier(meas["records"], m)
            for r in meas["records"]:
                if r.kind == "view":
                    self.views[i] += 1
                    continue
                acts = r.bytes - r.weight_bytes
                case.append(i)
                kind.append(KIND_NAMES.index(r.kind))
                flops.append(r.flops)
                outs.append(r.outputs)
                rows.append(r.rows * ROW_FLOPS)
                # seconds at full bandwidth: activations and hot weights (fixed), weights
                # re-read from the LLC or DRAM (divided by their fitted efficiencies)
                mem.append((r.weight_bytes if tier == "hot" else 0) / cache
                           + acts / (cache if acts <= m.cache_mb * 2**20 else bw))
                w_llc.append(r.weight_bytes / cache if tier == "llc" else 0.0)
                w_dram.append(r.weight_bytes / bw if tier == "dram" else 0.0)
                fused.append(r.fused)
                dram.append(streams_dram(r, m, tier))
        self.case = np.array(case, dtype=int)
        self.kind = np.array(kind, dtype=int)
        self.flops = np.array(flops, dtype=float)
        self.outs = np.array(outs, dtype=float)
        self.rows = np.array(rows, dtype=float)
        self.mem = np.array(mem, dtype=float)
        self.w_llc = np.array(w_llc, dtype=float)
        self.w_dram = np.array(w_dram, dtype=float)
        self.fused = np.array(fused, dtype=bool)
        self.dram = np.array(dram, dtype=bool)
        self.n = len(measured)
        self.peak = m.peak_gops["fp32"] * 1e9
        self.threads = m.threads

    def predict(self, ce: np.ndarray, me: np.ndarray, scalars: tuple) -> np.ndarray:
        """Seconds per case; ce has three more entries than KIND_NAMES (fused, epilogue,
        row);
        scalars: op, invoke and view overheads (s), the overlap share, the parallel grain
        (s), and the LLC and DRAM weight-read efficiencies."""
        ov, inv, view, overlap, grain, llc_eff, dram_eff = scalars
        nk = len(KIND_NAMES)
        comp = (self.flops / ce[self.kind] + self.outs / ce[nk + 1]
                + self.rows / ce[nk + 2]) / self.peak
        mem = (self.mem + self.w_llc / llc_eff + self.w_dram / dram_eff) / me[self.kind]
        r = np.maximum(comp, mem) + overlap * self.dram * np.minimum(comp, mem)
        r = r * parallel_slowdown(r, self.threads, grain)
        t = np.where(self.fused, self.flops / (self.peak * ce[nk]), ov + r)
        total = inv + view * self.views
        np.add.at(total, self.case, t)
        return total


def fit(measured: list[dict], m: Machine) -> tuple[Factors, dict]:
    """Factors minimising the log error on the measured cases (robust, with a prior)."""
    from scipy.optimize import least_squares

    design = _Design(measured, m)
    y = np.log([meas["seconds"] for meas in measured])
    nk = len(KIND_NAMES)
    prior = np.log(np.array([DEFAULT_COMPUTE[k] for k in _CKINDS]
                            + [DEFAULT_MEMORY[k] for k in KIND_NAMES]
                            + [PRIOR_OVERHEAD_US * 1e-6, PRIOR_INVOKE_US * 1e-6,
                               PRIOR_VIEW_US * 1e-6, PRIOR_OVERLAP, PRIOR_GRAIN_US * 1e-6,
                               PRIOR_WEIGHT_EFF, PRIOR_WEIGHT_EFF]))

    def unpack(theta):
        e = np.exp(theta)
        return e[:nk + 3], e[nk + 3:2 * nk + 3], tuple(e[-7:])

    def residuals(theta):
        return np.concatenate([np.log(design.predict(*unpack(theta))) - y,
                               PRIOR_WEIGHT * (theta - prior)])

    lo = np.log(np.r_[np.full(2 * nk + 3, 1e-3), 1e-7, 1e-7, 1e-9, 1e-3, 1e-8, 0.05, 0.05])
    hi = np.log(np.r_[np.full(2 * nk + 3, 2.0), 1e-3, 1e-2, 1e-4, 1.0, 1e-2, 3.0, 3.0])
    sol = least_squares(residuals, np.clip(prior, lo + 1e-9, hi - 1e-9), bounds=(lo, hi),
                        loss="soft_l1", f_scale=0.2)
    ce, me, scalars = unpack(sol.x)
    ov, inv, view, overlap, grain, llc_eff, dram_eff = scalars
    pred = design.predict(ce, me, scalars)
    err = pred / np.exp(y) - 1.0
    factors = Factors({k: float(v) for k, v in zip(_CKINDS, ce)},
                      {k: float(v) for k, v in zip(KIND_NAMES, me)},
                      float(ov * 1e6), float(inv * 1e6), float(view * 1e6),
                      float(overlap), float(grain * 1e6) if m.threads > 1 else 0.0,
                      float(llc_eff), float(dram_eff))
    report = {"cases": [{"name": meas["name"], "measured_ms": meas["seconds"] * 1e3,
                         "fitted_ms": float(p * 1e3), "rel_err": float(e)}
                        for meas, p, e in zip(measured, pred, err)],
              "median_abs_rel_err": float(np.median(np.abs(err))),
              "within_15pct": float(np.mean(np.abs(err) <= 0.15))}
    return factors, report


def _peaks(measured: list[dict]) -> tuple[float, float, float]:
    """The best GFLOP/s any conv or matmul case reached (noise only ever slows a case down),
    GB/s of the DRAM-sized and of the cache-sized streaming add."""
    by = {m["name"]: m for m in measured}
    rates = [sum(r.flops for r in m["records"] if r.kind in COMPUTE) / m["seconds"]
             for m in measured]
    peak = max(rates)

    def gbs(name: str) -> float:
        return sum(r.bytes for r in by[name]["records"]) / by[name]["seconds"] / 1e9

    return peak / 1e9, gbs("stream-add"), gbs("stream-add-cache")


def calibration_from(measured: list[dict], threads: int = 0, clock: str = "wall") -> dict:
    """The host calibration (peaks, bandwidths, fitted factors) of measured cases."""
    names = {m["name"] for m in measured}
    if not names >= REQUIRED:
        raise LayerwiseError(f"a calibration set needs the cases {sorted(REQUIRED)}")
    peak, dram, cache = _peaks(measured)
    n_threads = threads or os.cpu_count() or 1  # onnxruntime default: one per core
    machine = Machine({"fp32": peak}, dram, Factors(), cache, cache_mb(), threads=n_threads,
                      l2_mb=cache_mb(2))
    factors, report = fit(measured, machine)
    vnni = has_vnni()
    return {
        "format": FORMAT, "device": "host", "fingerprint": fingerprint(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": n_threads,
        "clock": clock,
        "peak_gops": {"fp32": peak, "int8": peak * (4.0 if vnni else 2.0)},
        "int8_peak": "estimated: 4x fp32 with AVX-512 VNNI, else 2x (not measured)",
        "bandwidth_gbs": dram, "cache_bandwidth_gbs": cache, "cache_mb": machine.cache_mb,
        "l2_mb": machine.l2_mb, "nchwc_block": nchwc_block(),
        "factors": factors.to_json(), "fit": report,
    }


def calibrate_host(force: bool = False, *, progress=lambda _: None,
                   cases: list[Case] | None = None, rounds: int = 9, threads: int = 0,
                   clock: str = "wall") -> dict:
    """The host calibration: the stored one when it matches this machine (unless `force`),
    else measured now (it takes minutes) and stored atomically. `threads` 0 is
    onnxruntime's default (what `layerwise profile` runs); clock 'cpu' needs threads=1."""
    if clock not in CLOCKS or (clock == "cpu" and threads != 1):
        raise LayerwiseError("the calibration clock is 'wall', or 'cpu' with threads=1")
    if not force and cases is None:
        cal = load_calibration(threads, clock)
        if cal is not None:
            return {**cal, "reused": True}
    try:
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise LayerwiseError("calibrating the host needs torch and onnxruntime: pip install "
                             "'layerwise[compile]'") from e
    measured = measure(cases or calibration_cases(), rounds, progress, threads, clock)
    progress("fitting efficiency factors")
    cal = calibration_from(measured, threads, clock)
    path = calibration_path(threads, clock)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".calibration-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(cal, f, indent=1)
    os.replace(tmp, path)
    return {**cal, "reused": False, "path": str(path)}
