"""Latency prediction on the host against ONNX Runtime measured in the same run.

    python bench/predict.py [--json] [--threads N] [--clock wall|cpu] [--models SPEC ...]
                            [--recalibrate | --same-rounds]

For each model: compile for the onnx target, profile with onnxruntime (batch 1), and predict
with the host's calibrated roofline (`layerwise.devices.latency.roofline`). The calibration set is
single ops and small layers only (devices/latency/calibrate.py), never these models.

Besides the profile's p50, the models are timed the way the calibration times its cases:
all of them in interleaved rounds, each keeping its best round's median. On a CPU shared
with other jobs wall time is inflated by however busy the machine is; `--threads 1 --clock
cpu` calibrates and measures single-threaded onnxruntime by the CPU time of the calling
thread, which other processes barely disturb (a check of the latency model itself; the
default calibration, threads 0 and wall clock, is what `layerwise predict --device host`
uses).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from layerwise import api
from layerwise.compiler.passes import run_passes
from layerwise.devices.latency.calibrate import best_rounds, calibrate_host
from layerwise.devices.latency.roofline import predict
from layerwise.runtime import open_bundle
from layerwise.runtime.profile import batch_inputs
from layerwise.runtime.runners import open_runner
from layerwise.targets import onnx as onnx_target

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "models.py"
MODELS = ["timm:resnet18", "zoo:mobilenet-v2", "zoo:minilm-l6", "timm:vit_tiny_patch16_224",
          "timm:mobilenetv3_small_100", "timm:convnext_atto", "timm:efficientnet_b0",
          f"{FIXTURES}:residual_mlp", f"{FIXTURES}:lstm_classifier"]
GOAL = 0.15


def legalized(spec: str):
    """The model's IR as its onnx bundle runs it: lifted, then the target's legalizations."""
    return run_passes(api.lift(spec), list(onnx_target.INFO.legalize))


def measure(spec: str, cal: dict, args, tmp: Path) -> tuple[dict, object]:
    """The prediction and profile of one model, and a call that runs its bundle once."""
    ir = legalized(spec)
    t0 = time.perf_counter()
    pred = predict(ir, "host", batch=1, calibration=cal)
    predict_s = time.perf_counter() - t0
    out = tmp / spec.replace("/", "_").replace(":", "_")
    api.compile(spec, api.CompileOptions(out=str(out), target="onnx", db="none"))
    prof = api.profile(str(out), api.ProfileOptions(
        runs=args.runs, warmup=max(5, args.runs // 10), batch=1, threads=args.threads,
        db="none"))
    bundle = open_bundle(out)
    runner = open_runner(bundle.target, bundle.model_path, threads=args.threads)
    feeds = batch_inputs(bundle, 1)
    lat = prof["latency_ms"]
    top = sorted(pred["layers"], key=lambda r: -r["ms"])[:3]
    row = {
        "spec": spec.replace(str(FIXTURES), "fixtures"),
        "batch": prof["batch"], "threads": prof["threads"],
        "gflop": pred["flops"] / 1e9, "ops": pred["ops"],
        "predicted_ms": pred["total_ms"], "measured_p50_ms": lat["p50"],
        "rel_err_p50": pred["total_ms"] / lat["p50"] - 1.0,
        "predict_s": predict_s,
        "top_layers": [{"layer": r["layer"], "ms": r["ms"], "bound": r["bound"]} for r in top],
    }
    return row, lambda: runner.run(feeds)


def same_rounds(args) -> dict:
    """Calibrate and measure in one set of interleaved rounds: the models are timed as extra
    calibration cases (same export, same timing), fitted on the calibration cases only and
    predicted from their own op records, so a spell of a slow host slows both alike."""
    from layerwise.devices import load_device
    from layerwise.devices.latency.calibrate import calibration_from
    from layerwise.devices.latency.calibrate import measure as measure_cases
    from layerwise.devices.latency.calibration_set import Case, calibration_cases
    from layerwise.devices.latency.roofline import machine_for, predict_records

    def lifted(spec):
        def make():
            ir = legalized(spec)
            return ir.program, tuple(v[:1] for v in ir.example_inputs.values())
        return make

    cases = calibration_cases()
    models = [Case(spec, exported=lifted(spec)) for spec in args.models]
    measured = measure_cases(cases + models, rounds=args.rounds, threads=args.threads,
                             clock=args.clock)
    cal = calibration_from(measured[:len(cases)], args.threads, args.clock)
    machine = machine_for(load_device("host"), cal)
    rows = []
    for meas in measured[len(cases):]:
        pred = predict_records(meas["records"], machine)["total_ms"]
        ms = meas["seconds"] * 1e3
        rows.append({"spec": meas["name"].replace(str(FIXTURES), "fixtures"),
                     "predicted_ms": pred, "measured_best_round_ms": ms,
                     "rel_err_best_round": pred / ms - 1.0})
    share = sum(abs(r["rel_err_best_round"]) <= GOAL for r in rows) / len(rows)
    return {"mode": "same rounds", "threads": cal["threads"], "clock": args.clock,
            "fit_median_abs_rel_err": cal["fit"]["median_abs_rel_err"],
            "fit_within_15pct": cal["fit"]["within_15pct"], "results": rows,
            "within_15pct_best_round": share}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--runs", type=int, default=100, help="profile runs (p50)")
    p.add_argument("--rounds", type=int, default=7, help="rounds of the best-round figure")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: default)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--recalibrate", action="store_true", help="measure the host again")
    p.add_argument("--same-rounds", action="store_true",
                   help="time the models in the calibration's own rounds (no bundles)")
    args = p.parse_args()
    if args.same_rounds:
        res = same_rounds(args)
        if args.json:
            print(json.dumps(res, indent=2))
            return
        print(f"calibration and models in the same rounds ({res['threads']} threads, "
              f"{res['clock']} clock); fit median |err| {res['fit_median_abs_rel_err']:.0%}")
        for r in res["results"]:
            print(f"{r['spec']:<28} pred {r['predicted_ms']:8.2f} ms  best round "
                  f"{r['measured_best_round_ms']:8.2f} ms  {r['rel_err_best_round']:+.0%}")
        print(f"within ±15%: {res['within_15pct_best_round']:.0%} of models; goal 80%")
        return
    t0 = time.perf_counter()
    cal = calibrate_host(force=args.recalibrate, threads=args.threads, clock=args.clock)
    cal_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        built = [measure(spec, cal, args, Path(tmp)) for spec in args.models]
        rows = [row for row, _ in built]
        runs = [run for _, run in built]
        for run in runs:  # warm-up
            for _ in range(3):
                run()
        best = best_rounds(runs, args.rounds, budget_s=0.3, min_runs=3, threads=args.threads,
                           clock=args.clock)
    for row, sec in zip(rows, best):
        row["measured_best_round_ms"] = sec * 1e3
        row["rel_err_best_round"] = row["predicted_ms"] / (sec * 1e3) - 1.0
    share = {k: sum(abs(r[f"rel_err_{k}"]) <= GOAL for r in rows) / len(rows)
             for k in ("p50", "best_round")}
    summary = {
        "calibration": {"reused": cal.get("reused"), "seconds": cal_s,
                        "threads": cal["threads"], "clock": cal["clock"],
                        "peak_gflops": cal["peak_gops"]["fp32"],
                        "dram_gbs": cal["bandwidth_gbs"], "cache_gbs": cal["cache_bandwidth_gbs"],
                        "fit_median_abs_rel_err": cal["fit"]["median_abs_rel_err"],
                        "fit_within_15pct": cal["fit"]["within_15pct"]},
        "results": rows, "within_15pct_p50": share["p50"],
        "within_15pct_best_round": share["best_round"],
        "goal": "at least 80% of models within ±15% of the measured latency",
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    c = summary["calibration"]
    print(f"host calibration ({'reused' if c['reused'] else 'measured'}, {c['threads']} "
          f"threads, {c['clock']} clock): {c['peak_gflops']:.0f} GFLOP/s, DRAM "
          f"{c['dram_gbs']:.1f} GB/s, cache {c['cache_gbs']:.1f} GB/s; fit on the calibration "
          f"set: median |err| {c['fit_median_abs_rel_err']:.0%}, "
          f"{c['fit_within_15pct']:.0%} within ±15%")
    print(f"{'model':<28} {'GFLOP':>6} {'ops':>4} {'pred ms':>8} {'p50 ms':>8} {'best ms':>8} "
          f"{'err p50':>8} {'err best':>8}  slowest predicted layer")
    for r in rows:
        top = r["top_layers"][0]
        print(f"{r['spec']:<28} {r['gflop']:6.2f} {r['ops']:4d} {r['predicted_ms']:8.2f} "
              f"{r['measured_p50_ms']:8.2f} {r['measured_best_round_ms']:8.2f} "
              f"{r['rel_err_p50']:+8.0%} {r['rel_err_best_round']:+8.0%}  {top['layer']} "
              f"({top['ms']:.2f} ms, {top['bound']})")
    print(f"within ±15%: {share['p50']:.0%} of models against the profile p50 (wall), "
          f"{share['best_round']:.0%} against the best round ({args.clock} clock); goal 80%")


if __name__ == "__main__":
    main()
