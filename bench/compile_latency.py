"""Compile time and ONNX Runtime latency against torch eager, measured in the same run.

    python bench/compile_latency.py [--json] [--runs N] [--batch B]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from layerwise import api

MODELS = ["zoo:minilm-l6", "timm:resnet18"]


def measure(spec: str, runs: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bundle"
        t0 = time.perf_counter()
        manifest = api.compile(spec, api.CompileOptions(out=str(out)))
        compile_s = time.perf_counter() - t0
        prof = api.profile(str(out), api.ProfileOptions(runs=runs, warmup=max(5, runs // 10),
                                                        batch=batch, baseline="eager",
                                                        baseline_spec=spec))
    return {
        "spec": spec,
        "compile_s": compile_s,
        "lift_s": manifest["timings"]["lift_s"],
        "emit_s": manifest["timings"]["emit_s"],
        "verify_s": manifest["timings"]["verify_s"],
        "rel_err": manifest["verification"]["rel_err"],
        "batch": prof["batch"],
        "threads": prof["threads"],
        "onnxruntime_p50_ms": prof["latency_ms"]["p50"],
        "eager_p50_ms": prof["baseline"]["latency_ms"]["p50"],
        "speedup_vs_eager": prof["speedup_vs_baseline"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--models", nargs="*", default=MODELS)
    args = p.parse_args()
    rows = [measure(spec, args.runs, args.batch) for spec in args.models]
    if args.json:
        print(json.dumps({"results": rows}, indent=2))
        return
    print(f"{'model':<16} {'compile s':>9} {'lift s':>7} {'rel_err':>9} {'ORT p50 ms':>11} "
          f"{'eager p50 ms':>13} {'ORT/eager speed-up':>19}")
    for r in rows:
        print(f"{r['spec']:<16} {r['compile_s']:9.1f} {r['lift_s']:7.1f} {r['rel_err']:9.1e} "
              f"{r['onnxruntime_p50_ms']:11.2f} {r['eager_p50_ms']:13.2f} "
              f"{r['speedup_vs_eager']:18.2f}×")


if __name__ == "__main__":
    main()
