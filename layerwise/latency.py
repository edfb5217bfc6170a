"""The latency verbs: `profile` (a bundle with its own runtime, here or on a device agent,
optionally against torch eager in the same run) and `predict` (the roofline model)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from layerwise.base.errors import LayerwiseError
from layerwise.options import ProfileOptions
from layerwise.record import record_run

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def predict(spec: str, device: str = "host", batch: int = 1, precision: str | None = None,
            calibrate: bool = False, progress: Progress = _noop, source_options=None) -> dict:
    """Predicted latency of SPEC on `device` (roofline over the exported graph's ops; the
    host is calibrated by timing a calibration set the first time, or with `calibrate`)."""
    from layerwise.compiler.passes import run_passes
    from layerwise.devices import calibrate_host, load_device
    from layerwise.devices import predict as predict_ir
    from layerwise.targets import get_target

    profile = load_device(device)  # an unknown name fails before the export
    if calibrate:
        calibrate_host(force=True, progress=progress)
    # the graph the device's target runs: its legalizations (e.g. unguard_softmax) applied
    from layerwise.sources import lift_spec

    ir = run_passes(lift_spec(spec, source_options, progress),
                    list(get_target(profile.target).INFO.legalize))
    return {"spec": spec, **predict_ir(ir, device, batch=batch, precision=precision,
                                       progress=progress)}


def profile(bundle: str, options: ProfileOptions | None = None,
            progress: Progress = _noop) -> dict:
    """Profile a bundle with its own runtime (or, with `remote`, on a device agent); with
    baseline 'eager', time torch on the same inputs in the same run and add the ratio."""
    from layerwise.runtime import profile as run_profile

    opts = options or ProfileOptions()
    if opts.remote is not None or opts.token_file is not None:
        from layerwise.runtime.remote import check_remote_options, remote_profile

        check_remote_options(opts.remote, opts.token_file, opts.baseline)
        result = remote_profile(bundle, opts.remote, opts.token_file, runs=opts.runs,
                                warmup=opts.warmup, threads=opts.threads, batch=opts.batch,
                                per_op=opts.per_op, power_mode=opts.power_mode,
                                prompt_len=opts.prompt_len, new_tokens=opts.new_tokens,
                                progress=progress)
        result["run_id"] = record_run("profile", result, opts.db)
        return result
    result = run_profile(bundle, runs=opts.runs, warmup=opts.warmup, threads=opts.threads,
                         batch=opts.batch, per_op=opts.per_op, power_mode=opts.power_mode,
                         trust_native=opts.trust_native, prompt_len=opts.prompt_len,
                         new_tokens=opts.new_tokens)
    if opts.baseline is None:
        result["run_id"] = record_run("profile", result, opts.db)
        return result
    if opts.baseline != "eager":
        raise LayerwiseError(f"unknown baseline {opts.baseline!r}; use 'eager'")
    eager = eager_latency(bundle, opts)
    result["baseline"] = eager
    result["speedup_vs_baseline"] = eager["latency_ms"]["p50"] / result["latency_ms"]["p50"]
    result["run_id"] = record_run("profile", result, opts.db)
    return result


# SPEC schemes whose loading runs no code named by the SPEC (the eager baseline may take them
# from a bundle's manifest).
PACKAGED = ("timm:", "torchvision:", "hf:", "zoo:")


def eager_latency(bundle: str, opts: ProfileOptions) -> dict:
    """torch eager latency of the bundle's source model on the bundle's own inputs."""
    import torch

    from layerwise.runtime import open_bundle
    from layerwise.runtime.profile import batch_inputs, stats_ms, time_calls

    b = open_bundle(bundle, check=False)
    spec = opts.baseline_spec or b.manifest.get("spec")
    if not opts.baseline_spec and not (isinstance(spec, str) and spec.startswith(PACKAGED)):
        raise LayerwiseError(f"the bundle names its model {spec!r}; a manifest may not choose "
                             "Python code to run: pass --baseline-spec SPEC to time it")
    from layerwise.sources import load_source

    source = load_source(spec)
    if source.module is None:
        raise LayerwiseError("the eager baseline needs a SPEC with a Python module, not a .pt2")
    feeds = {k: torch.from_numpy(np.ascontiguousarray(v))
             for k, v in batch_inputs(b, opts.batch).items()}
    threads = opts.threads or torch.get_num_threads()
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            times = time_calls(lambda: source.module(**feeds), opts.runs, opts.warmup)
    finally:
        torch.set_num_threads(prev)
    return {"name": "torch eager", "torch": torch.__version__, "threads": threads,
            "latency_ms": stats_ms(times)}
