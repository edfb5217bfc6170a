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

import io
import json
import math
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerwise.devices.graph_ops import COMPUTE, KIND_NAMES, OpRecord, op_records
from layerwise.devices.roofline import (
    DEFAULT_COMPUTE,
    DEFAULT_MEMORY,
    Factors,
    Machine,
    weights_cached,
)
from layerwise.errors import LayerwiseError

FORMAT = "layerwise-calibration/1"
PRIOR_OVERHEAD_US = 10.0
PRIOR_INVOKE_US = 20.0
PRIOR_WEIGHT = 0.2  # pull of the defaults in log space, per factor
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


# ---------------------------------------------------------------- the calibration set


@dataclass(frozen=True)
class Case:
    """One calibration model: a name and a builder returning (module, example inputs)."""

    name: str
    build: Callable[[], tuple]


def calibration_cases() -> list[Case]:
    import torch
    from torch import nn

    def conv(cin, cout, hw, k=3, *, stride=1, groups=1, act=nn.ReLU, repeat=1):
        def build():
            layers = []
            for _ in range(repeat):
                layers += [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                           nn.BatchNorm2d(cout)]
                if act is not None:
                    layers.append(act())
            return nn.Sequential(*layers), (torch.randn(1, cin, hw, hw),)
        return build

    def linear(tokens, k, n, act=None):
        def build():
            layers = [nn.Linear(k, n)] + ([act()] if act else [])
            return nn.Sequential(*layers), (torch.randn(1, tokens, k),)
        return build

    class Attention(nn.Module):
        def forward(self, q, k, v):
            a = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
            return a @ v

    def attention(heads, seq, dim):
        return lambda: (Attention(), tuple(torch.randn(1, heads, seq, dim) for _ in range(3)))

    class Fn(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, *xs):
            return self.fn(*xs)

    def fn(f, *shapes):
        return lambda: (Fn(f), tuple(torch.randn(*s) for s in shapes))

    def module(factory, *shapes):
        return lambda: (factory(), tuple(torch.randn(*s) for s in shapes))

    def embedding(vocab, dim, tokens):
        return lambda: (nn.Embedding(vocab, dim), (torch.randint(0, vocab, (1, tokens)),))

    cases = [
        Case("gemm-peak", linear(256, 512, 512)),
        Case("stream-add", fn(lambda x: x + 1.0, (1, 1 << 24))),  # 128 MiB: DRAM
        Case("stream-add-cache", fn(lambda x: x + 1.0, (1, 1 << 18))),  # 2 MiB: cache
        Case("stem-conv", conv(3, 32, 224, stride=2, act=nn.ReLU6)),
    ]
    cases += [Case(f"conv3x3-{c}x{hw}", conv(c, c, hw))
              for c, hw in ((16, 112), (32, 56), (64, 56), (128, 28), (256, 14), (512, 7))]
    cases += [Case(f"conv1x1-{a}-{b}x{hw}", conv(a, b, hw, k=1, act=None))
              for a, b, hw in ((32, 192, 56), (144, 24, 56), (96, 576, 14), (320, 1280, 7),
                               (64, 256, 28))]
    cases += [Case(f"dwconv-{c}x{hw}s{s}", conv(c, c, hw, stride=s, groups=c, act=nn.ReLU6))
              for c, hw, s in ((32, 112, 1), (144, 56, 2), (192, 28, 1), (384, 14, 1),
                               (960, 7, 1))]
    cases += [Case("conv3x3-chain4", conv(32, 32, 28, repeat=4)),
              Case("dwconv-chain4", conv(64, 64, 14, groups=64, act=nn.ReLU6, repeat=4))]
    cases += [Case(f"linear-{t}x{k}x{n}{'-gelu' if a else ''}", linear(t, k, n, a))
              for t, k, n, a in ((32, 384, 384, None), (32, 384, 1536, nn.GELU),
                                 (32, 1536, 384, None), (197, 192, 576, None),
                                 (197, 192, 768, nn.GELU), (197, 768, 192, None),
                                 (1, 512, 1000, None), (1, 1280, 1000, None),
                                 (64, 256, 256, None))]
    cases += [Case(f"attention-{h}x{s}x{d}", attention(h, s, d))
              for h, s, d in ((12, 32, 32), (3, 197, 64), (4, 64, 64))]
    cases += [
        Case("softmax-3x197", fn(lambda x: torch.softmax(x, -1), (1, 3, 197, 197))),
        Case("softmax-12x32", fn(lambda x: torch.softmax(x, -1), (1, 12, 32, 32))),
        Case("layernorm-32x384", module(lambda: nn.LayerNorm(384), (1, 32, 384))),
        Case("layernorm-197x192", module(lambda: nn.LayerNorm(192), (1, 197, 192))),
        Case("layernorm-197x768", module(lambda: nn.LayerNorm(768), (1, 197, 768))),
        Case("add-64x56", fn(torch.add, (1, 64, 56, 56), (1, 64, 56, 56))),
        Case("add-256x14", fn(torch.add, (1, 256, 14, 14), (1, 256, 14, 14))),
        Case("add-32x384", fn(torch.add, (1, 32, 384), (1, 32, 384))),
        Case("mul-relu-128x28", fn(lambda x: torch.relu(x * 0.5), (1, 128, 28, 28))),
        Case("gelu-197x768", fn(nn.functional.gelu, (1, 197, 768))),
        Case("sigmoid-96x56", fn(torch.sigmoid, (1, 96, 56, 56))),
        Case("maxpool-64x112", module(lambda: nn.MaxPool2d(3, 2, 1), (1, 64, 112, 112))),
        Case("avgpool-512x7", module(lambda: nn.AdaptiveAvgPool2d(1), (1, 512, 7, 7))),
        Case("avgpool-1280x7", module(lambda: nn.AdaptiveAvgPool2d(1), (1, 1280, 7, 7))),
        Case("mean-197x192", fn(lambda x: x.mean(-1), (1, 197, 192))),
        Case("permute-197x3x64", fn(lambda x: x.permute(0, 2, 1, 3).contiguous() + 0.0,
                                    (1, 197, 3, 64))),
        Case("cat-64x28", fn(lambda a, b: torch.cat([a, b], 1), (1, 64, 28, 28),
                             (1, 64, 28, 28))),
        Case("embedding-30522x384", embedding(30522, 384, 32)),
        # tiny ops: the per-inference and per-op overheads
        Case("tiny-add", fn(lambda x: x + 1.0, (1, 64))),
        Case("tiny-chain-32", fn(_chain, (1, 64))),
        Case("tiny-chain-96", fn(lambda x: _chain(_chain(_chain(x))), (1, 64))),
    ]
    return cases


def _chain(x):
    """32 dependent elementwise ops on a tiny tensor."""
    for _ in range(16):
        x = (x * 1.01 - 0.5).abs()
    return x


# ---------------------------------------------------------------- measuring


def _records(module, inputs) -> list[OpRecord]:
    import torch

    ep = torch.export.export(module.eval(), inputs, strict=False).run_decompositions()
    records, _ = op_records(ep, None, batch=None)
    return records


def ort_session(module, inputs, threads: int = 0):
    """An onnxruntime CPU session of `module` (legacy exporter: fast) and its feeds."""
    import onnxruntime as ort
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), inputs, buf, dynamo=False, opset_version=17,
                          input_names=[f"in{i}" for i in range(len(inputs))])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # 0: onnxruntime's default, as the runtime profiles
    opts.log_severity_level = 3
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
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
        module, inputs = case.build()
        with torch.no_grad():
            records = _records(module, inputs)
            sess, feeds = ort_session(module, inputs, threads)
        for _ in range(3):
            sess.run(None, feeds)
        built.append((case.name, records, lambda s=sess, f=feeds: s.run(None, f)))
    best = [math.inf] * len(built)
    for r in range(rounds):
        progress(f"calibration: timing round {r + 1}/{rounds}")
        for i, (_, _, run) in enumerate(built):
            best[i] = min(best[i], time_runs(run, budget_s=0.05, clock=clock))
    return [{"name": name, "seconds": t, "records": records}
            for (name, records, _), t in zip(built, best)]


def cache_mb() -> float:
    """Size of the largest CPU cache in MiB (sysfs), 0 when unknown."""
    sizes = []
    for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = p.read_text().strip()
        mult = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(text[-1:], 1 / 2**20)
        try:
            sizes.append(float(text.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return max(sizes, default=0.0)


# ---------------------------------------------------------------- fitting

_CKINDS = (*KIND_NAMES, "fused")


class _Design:
    """The cases' op records as arrays: a vectorised predict.op_time_s for a machine whose
    peak and bandwidths are fixed (measured) and whose factors are being fitted."""

    def __init__(self, measured: list[dict], m: Machine) -> None:
        case, kind, flops, mem, fused = [], [], [], [], []
        cache = m.cache_bandwidth_gbs or m.bandwidth_gbs
        for i, meas in enumerate(measured):
            cached = weights_cached(meas["records"], m)
            for r in meas["records"]:
                acts = r.bytes - r.weight_bytes
                case.append(i)
                kind.append(KIND_NAMES.index(r.kind))
                flops.append(r.flops)
                mem.append((r.weight_bytes / (cache if cached else m.bandwidth_gbs)
                            + acts / (cache if acts <= m.cache_mb * 2**20
                                      else m.bandwidth_gbs)) / 1e9)
                fused.append(r.fused)
        self.case = np.array(case, dtype=int)
        self.kind = np.array(kind, dtype=int)
        self.flops = np.array(flops, dtype=float)
        self.mem = np.array(mem, dtype=float)
        self.fused = np.array(fused, dtype=bool)
        self.n = len(measured)
        self.peak = m.peak_gops["fp32"] * 1e9

    def predict(self, ce: np.ndarray, me: np.ndarray, ov: float, inv: float) -> np.ndarray:
        """Seconds per case; ce has one more entry than KIND_NAMES (the fused kind)."""
        comp = self.flops / (self.peak * ce[self.kind])
        t = np.where(self.fused, self.flops / (self.peak * ce[-1]),
                     ov + np.maximum(comp, self.mem / me[self.kind]))
        total = np.full(self.n, inv)
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
                            + [PRIOR_OVERHEAD_US * 1e-6, PRIOR_INVOKE_US * 1e-6]))

    def unpack(theta):
        e = np.exp(theta)
        return e[:nk + 1], e[nk + 1:2 * nk + 1], e[-2], e[-1]

    def residuals(theta):
        return np.concatenate([np.log(design.predict(*unpack(theta))) - y,
                               PRIOR_WEIGHT * (theta - prior)])

    lo = np.log(np.r_[np.full(2 * nk + 1, 1e-3), 1e-7, 1e-7])
    hi = np.log(np.r_[np.full(2 * nk + 1, 2.0), 1e-3, 1e-2])
    sol = least_squares(residuals, np.clip(prior, lo + 1e-9, hi - 1e-9), bounds=(lo, hi),
                        loss="soft_l1", f_scale=0.2)
    ce, me, ov, inv = unpack(sol.x)
    pred = design.predict(ce, me, ov, inv)
    err = pred / np.exp(y) - 1.0
    factors = Factors({k: float(v) for k, v in zip(_CKINDS, ce)},
                      {k: float(v) for k, v in zip(KIND_NAMES, me)},
                      float(ov * 1e6), float(inv * 1e6))
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


def calibrate_host(force: bool = False, *, progress=lambda _: None,
                   cases: list[Case] | None = None, rounds: int = 9, threads: int = 0,
                   clock: str = "wall") -> dict:
    """The host calibration: the stored one when it matches this machine (unless `force`),
    else measured now (a few minutes on 2 shared cores) and stored atomically. `threads` 0 is
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
    names = {m["name"] for m in measured}
    if not names >= REQUIRED:
        raise LayerwiseError(f"a calibration set needs the cases {sorted(REQUIRED)}")
    peak, dram, cache = _peaks(measured)
    machine = Machine({"fp32": peak}, dram, Factors(), cache, cache_mb())
    progress("fitting efficiency factors")
    factors, report = fit(measured, machine)
    vnni = _has_vnni()
    cal = {
        "format": FORMAT, "device": "host", "fingerprint": fingerprint(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": threads or os.cpu_count() or 1,  # onnxruntime default: one per core
        "clock": clock,
        "peak_gops": {"fp32": peak, "int8": peak * (4.0 if vnni else 2.0)},
        "int8_peak": "estimated: 4x fp32 with AVX-512 VNNI, else 2x (not measured)",
        "bandwidth_gbs": dram, "cache_bandwidth_gbs": cache, "cache_mb": machine.cache_mb,
        "factors": factors.to_json(), "fit": report,
    }
    path = calibration_path(threads, clock)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".calibration-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(cal, f, indent=1)
    os.replace(tmp, path)
    return {**cal, "reused": False, "path": str(path)}


def _has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any("avx512_vnni" in ln or "avx_vnni" in ln for ln in f
                       if ln.startswith("flags"))
    except OSError:
        return False
