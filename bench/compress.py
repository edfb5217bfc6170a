"""Compression figures, each beside its baseline measured in the same run.

    python bench/compress.py [--json] [--eval N] [--calib N] [--runs N] [--skip-minilm]
                             [--skip-task | --only-task] [--skip-digits | --only-digits]

MobileNetV2 (real ImageNet weights) INT8: layerwise's calibrated QDQ model run by
onnxruntime and by OpenVINO, against NNCF's own `nncf.quantize` (default preset) on
OpenVINO, on the same calibration and evaluation photos: top-1 agreement with FP32 on all
inputs and on those where FP32 is confident (max softmax >= 0.5), and p50 latency at
batch 1 against FP32 onnxruntime, FP32 OpenVINO and torch eager. Latencies are taken in
interleaved rounds (every engine a slice per round, after a short idle gap so the previous
engine's spinning threads are parked) so a busy machine slows them alike; each
engine's time against NNCF's is also given paired by round (the median of the per-round
ratios), which the machine's drift between rounds does not move. Our OpenVINO bundle runs
in layerwise's runtime, which compiles the model for each input shape it is fed; NNCF's model
is timed as saved (dynamic batch) and also reshaped to the timed shape by hand, so the
quantization itself is compared apart from the runtime's shape specialisation.

A residual CNN trained here on scikit-learn's labelled digits (bench/digits_task.py):
FP32, NNCF INT8 and accuracy control, layerwise's plans on accuracy; against torch eager too.

MiniLM (real weights) on real sentences (even ones calibrate, odd ones evaluate): mean
cosine of each precision's embeddings to FP32, p50 latency at batch 1 (sequence 32) and
file size, beside NNCF's INT8 (transformer model type) on OpenVINO.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from layerwise import api
from layerwise.images import photo_crops
from layerwise.runtime import open_bundle, open_runner
from layerwise.runtime.profile import stats_ms

# idle time before each engine's slice: onnxruntime's worker threads spin-wait for a while
# after a run and take a core from whatever runs next (measured: OpenVINO right after an
# onnxruntime slice 1.56x slower; 1.20x after a 20 ms pause; level after 300 ms, or with
# onnxruntime's spinning off, which makes onnxruntime itself 15% slower)
SETTLE_S = 0.3
MINILM_PRECISIONS = ("fp16", "int8", "int8-dynamic", "int8-weight", "int4-weight")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def agreement(ref: np.ndarray, out: np.ndarray) -> dict:
    conf = softmax(ref).max(axis=1) >= 0.5
    same = ref.argmax(1) == out.argmax(1)
    return {"all": float(same.mean()), "confident": float(same[conf].mean()),
            "confident_n": int(conf.sum()), "n": len(same)}


def interleaved_p50(runs_by_name: dict, feeds, runs: int,
                    rounds: int = 0) -> tuple[dict[str, float], dict[str, list[float]]]:
    """p50 ms per engine, and each engine's per-round medians, timed in interleaved rounds
    (runs/rounds calls each, the order reversed every other round)."""
    times: dict[str, list[float]] = {n: [] for n in runs_by_name}
    medians: dict[str, list[float]] = {n: [] for n in runs_by_name}
    for run in runs_by_name.values():  # warm-up
        for _ in range(5):
            run(feeds)
    rounds = rounds or max(5, runs // 20)
    per = max(1, runs // rounds)
    names = list(runs_by_name)
    for k in range(rounds):
        for name in (names if k % 2 == 0 else names[::-1]):
            time.sleep(SETTLE_S)
            run, t = runs_by_name[name], []
            for _ in range(per):
                t0 = time.perf_counter()
                run(feeds)
                t.append(time.perf_counter() - t0)
            times[name] += t
            medians[name].append(float(np.median(t)))
    return {n: stats_ms(t)["p50"] for n, t in times.items()}, medians


def paired_ratio(medians: dict[str, list[float]], name: str, ref: str) -> dict:
    """Median over rounds of name's round median / ref's (a machine that speeds up or slows
    down between rounds moves both), and the share of rounds where name was faster."""
    a, b = np.array(medians[name]), np.array(medians[ref])
    return {"median_ratio": float(np.median(a / b)), "faster_rounds": float(np.mean(a < b))}


def nncf_rows(fp32_onnx: Path, calib: list[dict], validation: tuple, metric,
              model_type: str | None = None) -> dict:
    """NNCF's INT8 and its quantize_with_accuracy_control at 1 point of `metric(outputs,
    labels)` on `validation` (feeds, labels): name -> (OpenVINO model, seconds)."""
    import nncf
    import openvino as ov

    fp32 = ov.convert_model(str(fp32_onnx))
    kind = {"model_type": getattr(nncf.ModelType, model_type)} if model_type else {}
    t0 = time.perf_counter()
    q = nncf.quantize(fp32, nncf.Dataset(calib), subset_size=len(calib), **kind)
    out = {"nncf int8 openvino": (q, time.perf_counter() - t0)}
    items, labels = validation

    def validate(compiled, data) -> float:
        return metric(np.concatenate([compiled(f)[0] for f in data]), labels)

    t0 = time.perf_counter()
    qac = nncf.quantize_with_accuracy_control(
        fp32, nncf.Dataset(calib), nncf.Dataset(items), validation_fn=validate, max_drop=0.01,
        drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calib), **kind)
    out["nncf accuracy-control 1% openvino"] = (qac, time.perf_counter() - t0)
    return out


def bundle_run(path: Path):
    b = open_bundle(path)
    r = open_runner(b.target, b.model_path)
    return lambda feeds: r.run(feeds)[0]


def ov_run(model, static: bool = False):
    """OpenVINO CPU in f32 precision: the model as given, or (`static`) reshaped to each
    feed's shapes and compiled for them, as our runtime does for every shape it is fed."""
    import openvino as ov

    core, cfg = ov.Core(), {"INFERENCE_PRECISION_HINT": "f32"}
    reqs = {}

    def run(feeds):
        key = tuple(v.shape for v in feeds.values()) if static else None
        if key not in reqs:
            m = model
            if static:
                m = model.clone()
                m.reshape({k: list(v.shape) for k, v in feeds.items()})
            reqs[key] = core.compile_model(m, "CPU", cfg).create_infer_request()
        reqs[key].infer(feeds)
        return np.array(reqs[key].get_output_tensor(0).data)

    return run


def mobilenet_int8(n_eval: int, n_calib: int, runs: int, tmp: Path) -> dict:
    import nncf
    import openvino as ov
    import torch

    from layerwise.sources import load_source

    evals = photo_crops(n_eval, seed=1)
    calib = photo_crops(n_calib, seed=2)
    np.savez(tmp / "calib.npz", x=calib)
    spec = "zoo:mobilenet-v2"
    fp32 = api.compile(spec, api.CompileOptions(out=str(tmp / "fp32"), db="none"))
    api.compile(spec, api.CompileOptions(target="openvino", out=str(tmp / "fp32-ov"),
                                         db="none"))
    t0 = time.perf_counter()
    q = api.compile(spec, api.CompileOptions(
        out=str(tmp / "int8"), precision="int8", data=str(tmp / "calib.npz"), db="none"))
    ours_s = time.perf_counter() - t0
    qov = api.compile(spec, api.CompileOptions(
        target="openvino", out=str(tmp / "int8-ov"), precision="int8",
        data=str(tmp / "calib.npz"), db="none"))
    # NNCF's own post-training quantization of the same model on the same calibration photos
    t0 = time.perf_counter()
    nncf_model = nncf.quantize(ov.convert_model(str(tmp / "fp32" / "model.onnx")),
                               nncf.Dataset([{"x": calib[i:i + 1]} for i in range(len(calib))]))
    nncf_s = time.perf_counter() - t0
    model = load_source(spec).module
    runs_by_name = {
        "fp32 onnxruntime": bundle_run(tmp / "fp32"),
        "fp32 openvino": bundle_run(tmp / "fp32-ov"),
        "int8 onnxruntime (ours)": bundle_run(tmp / "int8"),
        "int8 openvino (ours)": bundle_run(tmp / "int8-ov"),
        "int8 openvino (nncf.quantize)": ov_run(nncf_model),
        # NNCF's model reshaped to the timed batch by hand, as our runtime does by itself
        "int8 openvino (nncf, static shape)": ov_run(nncf_model, static=True),
        "fp32 torch eager": lambda f: model(torch.from_numpy(f["x"])).numpy(),
    }
    rows = {}
    with torch.inference_mode():
        ref = np.concatenate([runs_by_name["fp32 onnxruntime"]({"x": evals[i:i + 1]})
                              for i in range(len(evals))])
        for name, run in runs_by_name.items():
            out = np.concatenate([run({"x": evals[i:i + 32]}) for i in range(0, len(evals), 32)])
            rows[name] = {"agreement": agreement(ref, out)}
        p50, medians = interleaved_p50(runs_by_name, {"x": evals[:1]}, runs)
    nncf_name = "int8 openvino (nncf.quantize)"
    for name, r in rows.items():
        r["p50_ms"] = p50[name]
        r["time_vs_nncf_paired"] = paired_ratio(medians, name, nncf_name)
        r["speedup_vs_fp32_onnxruntime"] = p50["fp32 onnxruntime"] / p50[name]
        r["speedup_vs_eager"] = p50["fp32 torch eager"] / p50[name]
        r["speedup_vs_nncf"] = p50[nncf_name] / p50[name]
    return {"model": spec, "eval_inputs": n_eval, "calibration_inputs": n_calib,
            "fp32_bytes": fp32["sizes"]["model_bytes"], "int8_bytes": q["sizes"]["model_bytes"],
            "int8_openvino_bytes": qov["sizes"]["model_bytes"], "ours_compile_s": ours_s,
            "nncf_quantize_s": nncf_s, "recipe": q["plan"]["quantize"]["recipe"],
            "quantization": q["model"]["quantization"], "rows": rows}


def minilm_precisions(runs: int, tmp: Path) -> dict:
    import nncf
    import openvino as ov

    from layerwise.sources import load_source
    from layerwise.text import stdlib_sentences

    sentences = stdlib_sentences()
    calib, held = sentences[0::2], sentences[1::2]
    (tmp / "calib.txt").write_text("\n".join(calib) + "\n")
    tok = load_source("zoo:minilm-l6").tokenizer

    def encode(s):
        e = tok(s, padding="max_length", truncation=True, max_length=32, return_tensors="np")
        return {k: e[k].astype(np.int64) for k in ("input_ids", "attention_mask")}

    feeds, calib_feeds = encode(held), encode(calib)
    spec = "zoo:minilm-l6"
    sizes, runs_by_name, compile_s = {}, {}, {}
    for p in ("fp32", *MINILM_PRECISIONS):
        t0 = time.perf_counter()
        m = api.compile(spec, api.CompileOptions(out=str(tmp / p), precision=p, db="none",
                                                 data=str(tmp / "calib.txt")))
        compile_s[p] = time.perf_counter() - t0
        sizes[p] = m["sizes"]["model_bytes"]
        runs_by_name[p] = bundle_run(tmp / p)
    m = api.compile(spec, api.CompileOptions(target="openvino", out=str(tmp / "int8-ov"),
                                             precision="int8", db="none",
                                             data=str(tmp / "calib.txt")))
    sizes["int8 openvino"] = m["sizes"]["model_bytes"]
    runs_by_name["int8 openvino"] = bundle_run(tmp / "int8-ov")
    t0 = time.perf_counter()
    nncf_model = nncf.quantize(
        ov.convert_model(str(tmp / "fp32" / "model.onnx")),
        nncf.Dataset([{k: v[i:i + 1] for k, v in calib_feeds.items()} for i in range(len(calib))]),
        model_type=nncf.ModelType.TRANSFORMER)
    compile_s["nncf int8 openvino"] = time.perf_counter() - t0
    runs_by_name["nncf int8 openvino"] = ov_run(nncf_model)
    ref = runs_by_name["fp32"](feeds)
    rows = {}
    for name, run in runs_by_name.items():
        out = run(feeds)
        cos = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
        rows[name] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                      "bytes": sizes.get(name), "compile_s": compile_s.get(name)}
    one = {k: v[:1] for k, v in feeds.items()}
    p50, _ = interleaved_p50(runs_by_name, one, runs)
    for name, r in rows.items():
        r["p50_ms"] = p50[name]
        r["speedup_vs_fp32"] = p50["fp32"] / p50[name]
    return {"model": spec, "held_out_sentences": len(held), "calibration_sentences": len(calib),
            "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--eval", type=int, default=300)
    p.add_argument("--calib", type=int, default=100)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--skip-task", action="store_true",
                   help="leave out MiniLM on the labelled man-page task (plan searches)")
    p.add_argument("--only-task", action="store_true", help="run only the labelled task")
    p.add_argument("--skip-digits", action="store_true",
                   help="leave out the CNN trained here on the labelled digits (plan searches)")
    p.add_argument("--only-digits", action="store_true", help="run only the digits CNN")
    args = p.parse_args()
    if args.only_digits:
        args.only_task = args.skip_task = True
    res = {}
    # NNCF draws progress bars on stdout: keep stdout for the result (--json)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        (Path(tmp) / "m").mkdir()
        if not args.only_task:
            res["mobilenet_v2_int8"] = mobilenet_int8(args.eval, args.calib, args.runs,
                                                      Path(tmp) / "m")
        if not args.skip_digits and (args.only_digits or not args.only_task):
            from digits_task import digits_task

            (Path(tmp) / "digits").mkdir()
            res["digits_task"] = digits_task(Path(tmp) / "digits", args.runs)
        if not args.skip_task:
            from minilm_task import minilm_task

            (Path(tmp) / "task").mkdir()
            res["minilm_task"] = minilm_task(Path(tmp) / "task", args.runs)
        if not args.skip_minilm and not args.only_task:
            (Path(tmp) / "t").mkdir()
            res["minilm_precisions"] = minilm_precisions(args.runs, Path(tmp) / "t")
    if args.json:
        print(json.dumps(res, indent=2))
        return
    if "minilm_task" in res:
        from minilm_task import print_table

        print_table(res["minilm_task"])
    if "digits_task" in res:
        from digits_task import print_table as print_digits

        print_digits(res["digits_task"])
    if "mobilenet_v2_int8" not in res:
        return
    r = res["mobilenet_v2_int8"]
    print(f"MobileNetV2 INT8 — {r['eval_inputs']} eval photos "
          f"({r['rows']['fp32 onnxruntime']['agreement']['confident_n']} confident), "
          f"{r['calibration_inputs']} calibration photos; model {r['fp32_bytes'] / 2**20:.1f} → "
          f"{r['int8_bytes'] / 2**20:.1f} MiB; quantize: ours {r['ours_compile_s']:.0f} s "
          f"(whole compile), nncf {r['nncf_quantize_s']:.0f} s")
    print(f"{'engine':<32} {'agree all':>9} {'agree conf':>10} {'p50 ms':>8} {'vs fp32 ORT':>11} "
          f"{'vs eager':>8} {'vs nncf':>8} {'time/nncf paired':>17}")
    for name, row in r["rows"].items():
        a, pr = row["agreement"], row["time_vs_nncf_paired"]
        print(f"{name:<32} {a['all']:9.3f} {a['confident']:10.3f} {row['p50_ms']:8.2f} "
              f"{row['speedup_vs_fp32_onnxruntime']:10.2f}× {row['speedup_vs_eager']:7.2f}× "
              f"{row['speedup_vs_nncf']:7.2f}× {pr['median_ratio']:8.3f} "
              f"({pr['faster_rounds']:.0%} faster)")
    if "minilm_precisions" in res:
        t = res["minilm_precisions"]
        print(f"\nMiniLM-L6 — {t['held_out_sentences']} held-out sentences, "
              f"{t['calibration_sentences']} calibration sentences, batch 1 × 32 tokens")
        print(f"{'precision':<22} {'cos mean':>9} {'cos min':>8} {'MiB':>6} {'p50 ms':>7} "
              f"{'vs fp32':>8}")
        for name, row in t["rows"].items():
            size = f"{row['bytes'] / 2**20:6.1f}" if row["bytes"] else f"{'—':>6}"
            print(f"{name:<22} {row['cosine_mean']:9.4f} {row['cosine_min']:8.4f} {size} "
                  f"{row['p50_ms']:7.2f} {row['speedup_vs_fp32']:7.2f}×")


if __name__ == "__main__":
    main()
