"""TVM untuned vs MetaSchedule-tuned, against torch eager, ONNX Runtime and OpenVINO FP32,
all measured in the same run at the same batch (the model's example batch, which a tuned TVM
bundle has fixed). Torch eager, ONNX Runtime, OpenVINO and tuned TVM are timed in three turns
of runs/3 calls each, so that load from other processes falls on all alike; untuned TVM
(seconds a call) is timed alone.

    python bench/tvm_tune.py [--json] [--trials N] [--spec zoo:mobilenet-v2] [--runs R]
                             [--tune-db DIR]

Tuning takes long on two cores (0.7-0.9 s per trial here, search included); --tune-db starts
from an earlier database (a folder or a tvm bundle) and adds --trials to it. The tuned
bundle is kept at --keep DIR when given, so a later run can pass it as --tune-db.

Measured here (2 vCPUs, znver3), one database grown over three runs:
    --trials 400 --keep A               tuning  289 s   18.34 ms, 2.61x OpenVINO FP32
    --trials 1600 --tune-db A --keep B  tuning 1291 s   15.11 ms, 2.01x
    --trials 2000 --tune-db B --keep C  tuning 1725 s   13.29 ms, 1.58x
    --trials 0 --tune-db C --runs 60                    10.47 ms, 1.57x (OpenVINO 6.67 ms)
The host's speed drifts between runs; each ratio is against OpenVINO in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from layerwise import api


def _options(**kw) -> api.CompileOptions:
    return api.CompileOptions(db="none", **kw)


def _interleaved(spec: str, bundles: dict[str, Path], batch: int, runs: int) -> dict:
    """p50 ms of each bundle's runtime and of torch eager, timed in three turns of runs/3
    calls each, so that load from other processes falls on all of them alike. (One call each
    per round would let one runtime's spinning worker threads slow the next one down.)"""
    import numpy as np
    import torch

    from layerwise.runtime import open_bundle, open_runner
    from layerwise.runtime.profile import batch_inputs

    calls = {}
    for name, path in bundles.items():
        b = open_bundle(path)
        settings = {"hint": "f32"} if b.target == "openvino" else {}
        runner = open_runner(b.target, b.model_path, **settings)
        feeds = batch_inputs(b, batch if b.batch_dynamic() else None)
        calls[name] = (lambda r=runner, f=feeds: r.run(f))
    module = api.load_source(spec).module
    tfeeds = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    calls["eager"] = lambda: module(**tfeeds)
    times: dict[str, list[float]] = {k: [] for k in calls}
    block = max(3, runs // 3)
    with torch.inference_mode():
        for _ in range(3):
            for name, fn in calls.items():
                for i in range(block + 2):
                    t0 = time.perf_counter()
                    fn()
                    if i >= 2:  # the first calls of a turn pay for the previous runtime's threads
                        times[name].append(time.perf_counter() - t0)
    return {f"{k}_ms": float(np.median(v) * 1000.0) for k, v in times.items()}


def measure(spec: str, trials: int, runs: int, tune_db: str | None, keep: str | None) -> dict:
    row: dict = {"spec": spec, "trials": trials}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundles = {"onnxruntime": tmp / "onnx"}
        api.compile(spec, _options(target="onnx", out=str(tmp / "onnx")))
        try:
            api.compile(spec, _options(target="openvino", out=str(tmp / "ov")))
            bundles["openvino_fp32"] = tmp / "ov"
        except Exception as e:  # noqa: BLE001 - OpenVINO is optional here
            row["openvino_error"] = str(e)[:200]
        t0 = time.perf_counter()
        m0 = api.compile(spec, _options(target="tvm", out=str(tmp / "tvm0")))
        row["tvm_untuned_compile_s"] = time.perf_counter() - t0
        out = Path(keep) if keep else tmp / "tvm1"
        t0 = time.perf_counter()
        m = api.compile(spec, _options(target="tvm", out=str(out), force=True,
                                       tune_trials=trials, tune_db=tune_db))
        row["tvm_tuned_compile_s"] = time.perf_counter() - t0
        row["tuning"] = m["model"].get("tuning")
        row["tvm_tuned_rel_err"] = m["verification"]["rel_err"]
        batch = row["batch"] = int(m["inputs"][0]["shape"][0])
        # untuned TVM is too slow to take turns with the others: timed alone, a few runs
        untuned = api.profile(str(tmp / "tvm0"), api.ProfileOptions(
            runs=5, warmup=1, batch=batch, db="none"))
        row["tvm_untuned_ms"] = untuned["latency_ms"]["p50"]
        row["tvm_untuned_ms_at_emit"] = m0["model"]["latency_ms"]["untuned"]
        row.update(_interleaved(spec, {**bundles, "tvm_tuned": out}, batch, runs))
    tuned = row["tvm_tuned_ms"]
    row["tuned_vs_untuned_speedup"] = row["tvm_untuned_ms"] / tuned
    row["tuned_vs_eager_speedup"] = row["eager_ms"] / tuned
    row["tuned_vs_onnxruntime_speedup"] = row["onnxruntime_ms"] / tuned
    if "openvino_fp32_ms" in row:
        row["tuned_over_openvino_fp32"] = tuned / row["openvino_fp32_ms"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--spec", default="zoo:mobilenet-v2")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--tune-db", default=None)
    p.add_argument("--keep", default=None, help="keep the tuned bundle here")
    args = p.parse_args()
    row = measure(args.spec, args.trials, args.runs, args.tune_db, args.keep)
    if args.json:
        print(json.dumps(row, indent=1, default=str))
        return
    print(f"{row['spec']}  batch {row['batch']}  trials {row['trials']}  "
          f"(tuning {row['tuning']['seconds']:.0f} s, {row['tuning']['records']} records)")
    for k in ("eager_ms", "onnxruntime_ms", "openvino_fp32_ms", "tvm_untuned_ms",
              "tvm_tuned_ms"):
        if k in row:
            print(f"  {k:<20} {row[k]:9.2f}")
    for k in ("tuned_vs_untuned_speedup", "tuned_vs_eager_speedup",
              "tuned_vs_onnxruntime_speedup", "tuned_over_openvino_fp32"):
        if k in row:
            print(f"  {k:<30} {row[k]:7.2f}x")


if __name__ == "__main__":
    main()
