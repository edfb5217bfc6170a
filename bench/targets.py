"""Every target on the same models, FP32 and INT8, against torch eager in the same run.

    python bench/targets.py [--json] [--models ...] [--targets ...] [--runs 50]
                            [--tune-trials 0] [--int8-device D]

For each model (timm resnet18, zoo:mobilenet-v2, zoo:minilm-l6, timm vit_tiny_patch16_224)
and target (onnx, openvino, tflite, tvm; tensorrt is emitted and checked, and timed only
where TensorRT imports), compiles FP32 and INT8 with `layerwise.compile` (INT8 calibrated on
real photos or sentences), and reports: verification rel_err against the lifted IR, INT8
agreement with the FP32 artifact on held-out real inputs (top-1 on all inputs and on those
where FP32 is confident, max softmax >= 0.5, for the classifiers; mean cosine for MiniLM),
ONNX Runtime-style p50 at batch 1 with the target's own runtime, and its ratio to torch
eager. A target that cannot map a model says so in the row (the one-line error).
`--int8-device D` compiles the INT8 rows with device D's quantization recipe (e.g.
`--targets tflite --int8-device coral-edgetpu`: full-integer models, no float islands).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import layerwise
from layerwise.api import CompileOptions, ProfileOptions
from layerwise.base.errors import LayerwiseError
from layerwise.base.registry import TARGET_NAMES
from layerwise.runtime import open_runner

MODELS = ["timm:resnet18", "zoo:mobilenet-v2", "zoo:minilm-l6", "timm:vit_tiny_patch16_224"]
TARGETS = list(TARGET_NAMES)


def data_for(spec: str, tmp: Path, n_calib: int, n_held: int) -> tuple[Path, list[dict]]:
    """(calibration data path, held-out feed dicts) of real inputs for `spec`: the first
    n_held inputs are held out, the next n_calib calibrate (the held-out set stays the same
    whatever the calibration size)."""
    if "minilm" in spec:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from importance import english_sentences

        from layerwise.sources import load_source

        sents = english_sentences(n_calib + n_held)
        path = tmp / "calib.txt"
        path.write_text("\n".join(sents[n_held:]))
        tok = load_source(spec).tokenizer
        enc = tok(sents[:n_held], padding="max_length", truncation=True, max_length=32,
                  return_tensors="np")
        held = [{k: enc[k][i:i + 1].astype(np.int64) for k in ("input_ids", "attention_mask")}
                for i in range(min(n_held, len(sents)))]
        return path, held
    from layerwise.images import photo_crops

    x = photo_crops(n_calib + n_held, seed=1)
    path = tmp / "calib.npz"
    np.savez(path, x=x[n_held:])
    return path, [{"x": x[i:i + 1]} for i in range(n_held)]


def outputs(bundle: Path, held: list[dict]) -> np.ndarray:
    """First output per held-out input; a fixed-batch artifact gets them in its batch size."""
    m = json.loads((bundle / "manifest.json").read_text())
    runner = open_runner(m["target"], bundle / m["model"]["file"])
    names = set(runner.input_names)
    fixed = m["inputs"][0]["shape"][0]
    step = fixed if isinstance(fixed, int) and not m["model"].get("dynamic_batch", True) else 1
    out = []
    for i in range(0, len(held) - step + 1, step):
        feed = {k: np.concatenate([f[k] for f in held[i:i + step]]) for k in held[0]
                if k in names}
        y = runner.run(feed)[0]
        out.append(y.reshape(len(y), -1))
    return np.concatenate(out)


def agreement(fp32: np.ndarray, int8: np.ndarray, classify: bool) -> dict:
    """Mean cosine of the outputs; top-1 agreement too for classifiers. timm's resnet18 and
    ViT-tiny have random weights here (no pretrained weights offline): their logits pick
    about the same class for every input, so top-1 agreement says little and the cosine
    of the logits is the figure to read."""
    cos = (fp32 * int8).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
    if not classify:
        return {"mean_cosine": float(cos.mean())}
    p = np.exp(fp32 - fp32.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    same = fp32.argmax(1) == int8.argmax(1)
    confident = p.max(1) >= 0.5
    return {"mean_cosine": float(cos.mean()), "top1_all": float(same.mean()),
            "top1_confident": float(same[confident].mean()) if confident.any() else None,
            "confident_inputs": int(confident.sum())}


def one(spec: str, target: str, precision: str, data: Path, tmp: Path, runs: int,
        trials: int, device: str | None = None) -> dict:
    out = tmp / f"{target}-{precision}"
    opts = CompileOptions(out=str(out), target=target, precision=precision, data=str(data),
                          db="none", force=True, tune_trials=trials if target == "tvm" else 0,
                          device=device)
    try:
        m = layerwise.compile(spec, opts)
    except LayerwiseError as e:
        return {"error": str(e).splitlines()[0]}
    row = {"rel_err": m["verification"]["rel_err"], "bundle": out,
           "model_bytes": m["sizes"]["model_bytes"]}
    if target == "tensorrt":
        row["p50_ms"] = None  # needs TensorRT and a GPU: `layerwise build-engine`
        row["checks"] = m["model"].get("tensorrt")
        return row
    fixed = not m["model"].get("dynamic_batch", True)  # e.g. TFLite transformers
    prof = layerwise.profile(str(out), ProfileOptions(runs=runs, warmup=max(5, runs // 10),
                                                      batch=None if fixed else 1, db="none"))
    row["batch"] = prof["batch"]
    row["p50_ms"] = prof["latency_ms"]["p50"]
    row["variants"] = {k: v["p50"] for k, v in (prof.get("variants") or {}).items()}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--targets", nargs="*", default=TARGETS)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--calibration", type=int, default=64)
    p.add_argument("--held-out", type=int, default=200)
    p.add_argument("--tune-trials", type=int, default=0)
    p.add_argument("--int8-device", default=None,
                   help="compile the INT8 rows with this device's quantization recipe")
    args = p.parse_args()
    report = []
    for spec in args.models:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            data, held = data_for(spec, tmp, args.calibration, args.held_out)
            classify = "minilm" not in spec
            ref = layerwise.compile(spec, CompileOptions(out=str(tmp / "ref"), db="none"))
            eager = layerwise.profile(str(tmp / "ref"), ProfileOptions(
                runs=args.runs, warmup=5, batch=1, db="none", baseline="eager",
                baseline_spec=spec))
            eager_ms = eager["baseline"]["latency_ms"]["p50"]
            entry = {"model": spec, "eager_p50_ms": eager_ms, "params": ref["sizes"]["params"],
                     "targets": {}}
            for target in args.targets:
                rows = {}
                for precision in ("fp32", "int8"):
                    r = one(spec, target, precision, data, tmp, args.runs, args.tune_trials,
                            args.int8_device if precision == "int8" else None)
                    if r.get("p50_ms"):
                        r["speedup_vs_eager"] = eager_ms / r["p50_ms"]
                    rows[precision] = r
                if "bundle" in rows["fp32"] and "bundle" in rows["int8"] \
                        and target != "tensorrt":
                    rows["int8"]["agreement"] = agreement(
                        outputs(rows["fp32"]["bundle"], held),
                        outputs(rows["int8"]["bundle"], held), classify)
                for r in rows.values():
                    r.pop("bundle", None)
                entry["targets"][target] = rows
            report.append(entry)
            if not args.json:
                _print(entry)
    if args.json:
        print(json.dumps({"held_out_inputs": args.held_out, "runs": args.runs,
                          "int8_device": args.int8_device, "results": report}, indent=2,
                         default=str))


def _print(entry: dict) -> None:
    print(f"\n{entry['model']}: torch eager p50 {entry['eager_p50_ms']:.2f} ms (batch 1)")
    print(f"  {'target':<9} {'prec':<5} {'rel_err':>9} {'p50 ms':>8} {'vs eager':>9}  "
          "INT8 agreement / error")
    for target, rows in entry["targets"].items():
        for precision, r in rows.items():
            if "error" in r:
                print(f"  {target:<9} {precision:<5} {r['error'][:90]}")
                continue
            p50 = f"{r['p50_ms']:8.2f}" if r.get("p50_ms") else f"{'-':>8}"
            ratio = f"{r['speedup_vs_eager']:8.2f}×" if r.get("speedup_vs_eager") else \
                f"{'-':>9}"
            agree = r.get("agreement", "")
            print(f"  {target:<9} {precision:<5} {r['rel_err']:9.1e} {p50} {ratio}  {agree}")


if __name__ == "__main__":
    main()
