"""Compression figures, each beside its baseline measured in the same run.

    python bench/compress.py [--json] [--eval N] [--calib N] [--runs N]

MobileNetV2 (real ImageNet weights) INT8: layerwise's calibrated QDQ model run by
onnxruntime and by OpenVINO, against NNCF's own `nncf.quantize` (default preset) on
OpenVINO, on the same calibration and evaluation photos: top-1 agreement with FP32 on all
inputs and on those where FP32 is confident (max softmax >= 0.5), and p50 latency at
batch 1 against FP32 onnxruntime and torch eager.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from layerwise import api
from layerwise.images import photo_crops
from layerwise.runtime import open_bundle, open_runner
from layerwise.runtime.profile import stats_ms, time_calls


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def agreement(ref: np.ndarray, out: np.ndarray) -> dict:
    conf = softmax(ref).max(axis=1) >= 0.5
    same = ref.argmax(1) == out.argmax(1)
    return {"all": float(same.mean()), "confident": float(same[conf].mean()),
            "confident_n": int(conf.sum()), "n": len(same)}


def logits_of(run, images: np.ndarray) -> np.ndarray:
    return np.concatenate([run(images[i:i + 1]) for i in range(len(images))])


def latency(run, x: np.ndarray, runs: int) -> float:
    return stats_ms(time_calls(lambda: run(x), runs, max(5, runs // 10)))["p50"]


def mobilenet_int8(n_eval: int, n_calib: int, runs: int, tmp: Path) -> dict:
    import openvino as ov
    import torch

    from layerwise.sources import load_source

    evals = photo_crops(n_eval, seed=1)
    calib = photo_crops(n_calib, seed=2)
    np.savez(tmp / "calib.npz", x=calib)
    fp32 = api.compile("zoo:mobilenet-v2", api.CompileOptions(out=str(tmp / "fp32"), db="none"))
    t0 = time.perf_counter()
    q = api.compile("zoo:mobilenet-v2", api.CompileOptions(
        out=str(tmp / "int8"), precision="int8", data=str(tmp / "calib.npz"), db="none"))
    ours_compile_s = time.perf_counter() - t0

    def ort(path):
        b = open_bundle(path)
        r = open_runner(b.target, b.model_path)
        return lambda x: r.run({"x": x})[0]

    core = ov.Core()

    def ov_run(model):
        c = core.compile_model(model, "CPU")
        return lambda x: c({"x": x})[c.output(0)]

    runs_by_name = {"fp32 onnxruntime": ort(tmp / "fp32"), "int8 onnxruntime (ours)":
                    ort(tmp / "int8"), "int8 openvino (ours)": ov_run(str(tmp / "int8" /
                                                                          "model.onnx"))}
    # NNCF's own post-training quantization of the same model on the same calibration photos
    import nncf

    t0 = time.perf_counter()
    fp32_ov = ov.convert_model(str(tmp / "fp32" / "model.onnx"))
    nncf_model = nncf.quantize(fp32_ov, nncf.Dataset([{"x": calib[i:i + 1]}
                                                      for i in range(len(calib))]))
    nncf_s = time.perf_counter() - t0
    runs_by_name["int8 openvino (nncf.quantize)"] = ov_run(nncf_model)
    model = load_source("zoo:mobilenet-v2").module
    with torch.inference_mode():
        runs_by_name["fp32 torch eager"] = lambda x: model(torch.from_numpy(x)).numpy()
    ref = logits_of(runs_by_name["fp32 onnxruntime"], evals)
    rows = {}
    for name, run in runs_by_name.items():
        with torch.inference_mode():
            out = logits_of(run, evals)
            p50 = latency(run, evals[:1], runs)
        rows[name] = {"agreement": agreement(ref, out), "p50_ms": p50}
    base = rows["fp32 onnxruntime"]["p50_ms"]
    eager = rows["fp32 torch eager"]["p50_ms"]
    for r in rows.values():
        r["speedup_vs_fp32_onnxruntime"] = base / r["p50_ms"]
        r["speedup_vs_eager"] = eager / r["p50_ms"]
    return {"model": "zoo:mobilenet-v2", "eval_inputs": n_eval, "calibration_inputs": n_calib,
            "fp32_bytes": fp32["sizes"]["model_bytes"], "int8_bytes": q["sizes"]["model_bytes"],
            "ours_compile_s": ours_compile_s, "nncf_quantize_s": nncf_s, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--eval", type=int, default=300)
    p.add_argument("--calib", type=int, default=100)
    p.add_argument("--runs", type=int, default=100)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = {"mobilenet_v2_int8": mobilenet_int8(args.eval, args.calib, args.runs, Path(tmp))}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    r = res["mobilenet_v2_int8"]
    print(f"MobileNetV2 INT8 — {r['eval_inputs']} eval photos, {r['calibration_inputs']} "
          f"calibration photos; model {r['fp32_bytes'] / 2**20:.1f} → "
          f"{r['int8_bytes'] / 2**20:.1f} MiB")
    print(f"{'engine':<32} {'agree all':>9} {'agree conf':>10} {'p50 ms':>8} {'vs fp32 ORT':>11} "
          f"{'vs eager':>8}")
    for name, row in r["rows"].items():
        a = row["agreement"]
        print(f"{name:<32} {a['all']:9.3f} {a['confident']:10.3f} {row['p50_ms']:8.2f} "
              f"{row['speedup_vs_fp32_onnxruntime']:10.2f}× {row['speedup_vs_eager']:7.2f}×")


if __name__ == "__main__":
    main()
