"""MTCNN face detection with compiled nets on every target, against facenet-pytorch itself.

    python bench/mtcnn_faces.py [--targets onnx openvino tflite tvm tensorrt] [--runs 5]
                                [--threads 0] [--out DIR] [--json FILE]

Compiles facenet-pytorch's pretrained P-, R- and O-net (`zoo:mtcnn-pnet|rnet|onet`) for each
target with `layerwise.compile` (each verified by the target's runtime), runs the torch-free
pipeline (`layerwise.runtime.faces.FaceDetector`) on scikit-image's astronaut, and compares
its faces with `facenet_pytorch.MTCNN(keep_all=True)` run in the same process: faces found,
box IoU per matched face (the worst), the largest probability and landmark differences, and
the median detection time with its ratio to facenet-pytorch's. TensorRT bundles are emitted
and parser-checked by `compile`; they run only where TensorRT imports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import layerwise
from layerwise.api import CompileOptions
from layerwise.base.errors import LayerwiseError
from layerwise.runtime.faces import FaceDetector

NETS = ("pnet", "rnet", "onet")
TARGETS = ["onnx", "openvino", "tflite", "tvm", "tensorrt"]
RUNNABLE = {"onnx", "openvino", "tflite", "tvm"}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
                          - inter))


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def reference(img: np.ndarray, runs: int) -> dict:
    """facenet-pytorch's own MTCNN on img: boxes, probs, landmarks, median time."""
    import torch
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True)
    with torch.no_grad():
        boxes, probs, marks = mtcnn.detect(img, landmarks=True)
        ms = median_ms(lambda: mtcnn.detect(img, landmarks=True), runs)
    if boxes is None:
        boxes, probs, marks = np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    return {"boxes": np.asarray(boxes, np.float64), "probs": np.asarray(probs, np.float64),
            "landmarks": np.asarray(marks, np.float64), "ms": ms}


def compare(faces, ref: dict) -> dict:
    """Each reference face matched to the detected face of highest IoU."""
    ious, dprob, dmark = [], [], []
    for i, box in enumerate(ref["boxes"]):
        if not len(faces.boxes):
            break
        j = int(np.argmax([iou(box, b) for b in faces.boxes]))
        ious.append(iou(box, faces.boxes[j]))
        dprob.append(abs(float(faces.probs[j]) - float(ref["probs"][i])))
        dmark.append(float(np.linalg.norm(faces.landmarks[j] - ref["landmarks"][i],
                                          axis=1).max()))
    return {"faces": len(faces.boxes), "want": len(ref["boxes"]),
            "min_iou": min(ious) if ious else None, "max_dprob": max(dprob, default=None),
            "max_landmark_px": max(dmark, default=None)}


def run_target(target: str, out: Path, img: np.ndarray, ref: dict, args) -> dict:
    row: dict = {"target": target}
    paths, errs = [], []
    t0 = time.perf_counter()
    try:
        for n in NETS:
            path = out / f"{n}-{target}"
            m = layerwise.compile(f"zoo:mtcnn-{n}", CompileOptions(
                target=target, out=str(path), force=True))
            errs.append(m["verification"]["rel_err"])
            paths.append(path)
    except LayerwiseError as e:
        return {**row, "error": str(e).splitlines()[0][:200]}
    row.update(compile_s=time.perf_counter() - t0, verified=True, max_rel_err=max(errs))
    if target not in RUNNABLE:
        return {**row, "note": "emitted and parser-checked; no runtime for it here"}
    det = FaceDetector(*paths, threads=args.threads)
    faces = det.detect(img)
    row.update(compare(faces, ref))
    row["ms"] = median_ms(lambda: det.detect(img), args.runs)
    row["vs_facenet"] = ref["ms"] / row["ms"]
    return row


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=TARGETS)
    ap.add_argument("--runs", type=int, default=5, help="timed detections per pipeline")
    ap.add_argument("--threads", type=int, default=0, help="runtime threads (0: all cores)")
    ap.add_argument("--out", help="keep the bundles in this folder (default: a temp folder)")
    ap.add_argument("--json", help="write the rows to this JSON file")
    args = ap.parse_args()
    from skimage import data

    img = data.astronaut()
    ref = reference(img, args.runs)
    print(f"facenet-pytorch MTCNN: {len(ref['boxes'])} face(s), {ref['ms']:.1f} ms "
          f"(median of {args.runs})")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        for t in args.targets:
            rows.append(run_target(t, out, img, ref, args))
            print(f"  {t}: done", flush=True)
    print(f"\n{'target':<9} {'verified':>9} {'faces':>6} {'min IoU':>8} {'|dprob|':>8} "
          f"{'landm px':>9} {'ms':>7} {'vs facenet':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['target']:<9} FAILED: {r['error']}")
            continue
        faces = f"{r['faces']}/{r['want']}" if "faces" in r else "-"
        ratio = f"{r['vs_facenet']:9.2f}x" if "ms" in r else f"{'-':>10}"
        note = f"  ({r['note']})" if "note" in r else ""
        print(f"{r['target']:<9} {fmt(r['max_rel_err'], '9.1e')} {faces:>6} "
              f"{fmt(r.get('min_iou'), '8.4f')} {fmt(r.get('max_dprob'), '8.1e')} "
              f"{fmt(r.get('max_landmark_px'), '9.3f')} {fmt(r.get('ms'), '7.1f')} "
              f"{ratio}{note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"reference_ms": ref["ms"], "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
