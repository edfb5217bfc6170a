"""Latency and memory profile of a bundle with its own runtime (no torch)."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import numpy as np

from layerwise.base.errors import LayerwiseError
from layerwise.runtime.bundle import Bundle, open_bundle
from layerwise.runtime.runners import PROFILE_VARIANTS, open_runner


def batch_inputs(bundle: Bundle, batch: int | None) -> dict[str, np.ndarray]:
    """The bundle's example inputs cut or tiled to `batch` rows (needs a dynamic batch)."""
    inputs = bundle.example_inputs()
    if batch is None:
        batch = 1 if bundle.batch_dynamic() else None
    if batch is None:
        return inputs
    if batch < 1:
        raise LayerwiseError(f"--batch must be >= 1, got {batch}")
    if not bundle.batch_dynamic():
        have = next(iter(inputs.values())).shape[0]
        if batch != have:
            raise LayerwiseError(f"this bundle has a fixed batch of {have}; profile without "
                                 "--batch or recompile a model whose batch can be dynamic")
        return inputs
    return {k: np.resize(v, (batch, *v.shape[1:])) for k, v in inputs.items()}


def check_threads(threads: int) -> None:
    """Refuse a negative thread count (0 means the runtime's default)."""
    if threads < 0:
        raise LayerwiseError(f"--threads must be an integer >= 0 (0: the runtime's default), "
                             f"got {threads}")


def stats_ms(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1000.0
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "std": float(a.std()), "min": float(a.min())}


# idle time before timing: worker threads of whatever ran before in this process (another
# onnxruntime session, torch's OpenMP pool) spin-wait for a while after their last task and
# take a core from the runs timed next, so timing starts after an idle pause
SETTLE_S = 0.3


def time_calls(fn, runs: int, warmup: int) -> list[float]:
    """Wall-clock seconds of `runs` calls of fn after an idle pause and `warmup` untimed
    calls."""
    time.sleep(SETTLE_S)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def profile(path, *, runs: int | None = None, warmup: int = 10, threads: int = 0,
            batch: int | None = None, per_op: bool = False,
            power_mode: str | None = None, trust_native: bool = False,
            prompt_len: int = 128, new_tokens: int = 128) -> dict:
    """Warm up, time `runs` runs (default 100), and report latency percentiles, throughput
    and memory. `trust_native`: load a native model library not compiled on this machine.
    A text-generation bundle is profiled as a generator instead (runtime/lm_profile.py:
    `runs` generations, default 3, of `new_tokens` after `prompt_len`)."""
    bundle = open_bundle(path)
    if "generation" in bundle.manifest:  # a generator (compile --task text-generation)
        from layerwise.runtime.lm_profile import profile_lm

        if batch not in (None, 1) or power_mode is not None:
            raise LayerwiseError("a text-generation bundle is profiled at batch 1 with the "
                                 "runtime's default power setting; drop --batch/--power-mode")
        return profile_lm(bundle, prompt_len, new_tokens, runs or 3, threads=threads)
    runs = 100 if runs is None else runs
    if runs < 1 or warmup < 0:
        raise LayerwiseError("--runs must be >= 1 and --warmup >= 0")
    check_threads(threads)
    feeds = batch_inputs(bundle, batch)
    variants = PROFILE_VARIANTS.get(bundle.target, {"": {}})
    first, *others = variants.items()
    rss0 = _rss_mb()
    runner = open_runner(bundle.target, bundle.model_path, threads=threads, per_op=per_op,
                         power_mode=power_mode, trust_native=trust_native, **first[1])
    times = time_calls(lambda: runner.run(feeds), runs, warmup)
    n = next(iter(feeds.values())).shape[0]
    lat = stats_ms(times)
    result = {
        "bundle": str(bundle.dir.resolve()),
        "spec": bundle.manifest.get("spec"),
        "target": bundle.target,
        "device": bundle.manifest.get("device", "host"),
        "runtime": f"{runner.name} {runner.version}",
        "batch": int(n),
        "runs": runs,
        "warmup": warmup,
        "threads": runner.threads,
        "latency_ms": lat,
        "throughput_per_s": n * 1000.0 / lat["mean"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_increase_mb": _rss_mb() - rss0,
        "cpu_count": os.cpu_count(),
        "power_mode": power_mode,
        "cpu_governor": _governor(),
    }
    if per_op:
        result["ops"] = runner.op_profile()
    if others:
        result["variants"] = {first[0]: lat}
        for name, settings in others:
            alt = open_runner(bundle.target, bundle.model_path, threads=threads,
                              power_mode=power_mode, trust_native=trust_native, **settings)
            result["variants"][name] = {
                **stats_ms(time_calls(lambda alt=alt: alt.run(feeds), runs, warmup)),
                "precision": getattr(alt, "precision", None)}
    return result


def _governor() -> str | None:
    """The CPU frequency governor of core 0 (Linux), which bounds what a power mode can do."""
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        return None
