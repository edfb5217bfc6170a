"""MiniLM on a real labelled task, side by side in one run (called by bench/compress.py).

The task: which man-page section a sentence comes from (bench/man_sections.py, six
sections); the metric: leave-one-out nearest-centroid accuracy of the embeddings. The rows:
FP32 (onnxruntime, OpenVINO), NNCF's INT8 (transformer model type), NNCF's
quantize_with_accuracy_control at 1 point, and layerwise's plan search at several
--max-drop bounds on that metric (--eval), for OpenVINO and onnxruntime. Every row is scored
on the same held-back test half of the labelled sentences (the half the search never saw)
and on text of another kind (standard-library docstrings: cosine to FP32), timed at batch 1
and 8 in interleaved rounds, each time also given as the median per-round ratio to NNCF's
INT8.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from layerwise import api
from layerwise.compiler.plan.metrics import centroid_accuracy

SPEC = "zoo:minilm-l6"
BOUNDS = ("0.5%", "1%", "2%")


def _encode(tok, lines: list[str]) -> dict[str, np.ndarray]:
    e = tok(lines, padding="max_length", truncation=True, max_length=32, return_tensors="np")
    return {k: e[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def _rows(feeds: dict, n: int) -> list[dict]:
    return [{k: v[i:i + n] for k, v in feeds.items()} for i in range(0, len(feeds["input_ids"]), n)
            if i + n <= len(feeds["input_ids"])]


def _embed(run, feeds: dict) -> np.ndarray:
    return np.concatenate([run(f) for f in _rows(feeds, 8)])


def minilm_task(tmp: Path, runs: int, bounds=BOUNDS, targets=("openvino", "onnx")) -> dict:
    """Build every row, score and time it; returns the table as plain values."""
    from compress import bundle_run, interleaved_p50, nncf_rows, ov_run, paired_ratio
    from man_sections import build

    from layerwise.sources import load_source

    sizes = build(tmp / "task", per_class=100)
    lines = [ln.rsplit("\t", 1) for ln in (tmp / "task" / "eval.tsv").read_text().splitlines()]
    names = sorted({s for _, s in lines})
    labels = np.array([names.index(s) for _, s in lines])
    tok = load_source(SPEC).tokenizer
    feeds = _encode(tok, [t for t, _ in lines])
    # --eval is read in batches of 8 and the search decides on the even ones; the odd ones
    # are the test half it never sees
    batches = [np.arange(8 * k, min(8 * k + 8, len(labels))) for k in range(-(-len(labels) // 8))]
    test = np.concatenate(batches[1::2])
    decide = np.concatenate(batches[0::2])
    test_feeds = {k: v[test] for k, v in feeds.items()}
    other = _encode(tok, (tmp / "task" / "other.txt").read_text().splitlines())
    calib = _encode(tok, (tmp / "task" / "data.txt").read_text().splitlines()[:300])
    calib_list = [{k: v[i:i + 1] for k, v in calib.items()} for i in range(300)]
    data = str(tmp / "task" / "data.txt")
    runs_by, info = {}, {}
    for target in targets:
        t0 = time.perf_counter()
        m = api.compile(SPEC, api.CompileOptions(target=target, out=str(tmp / f"fp32-{target}"),
                                                 db="none"))
        runs_by[f"fp32 {target}"] = bundle_run(tmp / f"fp32-{target}")
        info[f"fp32 {target}"] = {"bytes": m["sizes"]["model_bytes"],
                                  "compile_s": time.perf_counter() - t0}
    validation = ([{k: v[b] for k, v in feeds.items()} for b in batches[0::2]],
                  labels[decide])
    for name, (model, seconds) in nncf_rows(tmp / "fp32-onnx" / "model.onnx", calib_list,
                                        validation, centroid_accuracy, "TRANSFORMER").items():
        runs_by[name] = ov_run(model, static=True)
        info[name] = {"compile_s": seconds}
    for target in targets:
        for bound in bounds:
            name = f"layerwise plan {bound} {target}"
            out = tmp / name.replace(" ", "-")
            t0 = time.perf_counter()
            m = api.compile(SPEC, api.CompileOptions(
                target=target, out=str(out), data=data, eval=str(tmp / "task" / "eval.tsv"),
                max_drop=bound, db="none"))
            chosen = m["search"]["chosen"]
            runs_by[name] = bundle_run(out)
            info[name] = {"bytes": m["sizes"]["model_bytes"],
                          "compile_s": time.perf_counter() - t0,
                          "plan": {k: chosen[k] for k in ("drop", "prune", "precision",
                                                          "keep_fp32")},
                          "search_task_metric": chosen.get("task_metric")}
    ref_other = _embed(runs_by[next(iter(runs_by))], other)
    table = {}
    for name, run in runs_by.items():
        emb, emb_other = _embed(run, test_feeds), _embed(run, other)
        cos = (emb_other * ref_other).sum(1) / np.linalg.norm(emb_other, axis=1) / \
            np.linalg.norm(ref_other, axis=1)
        table[name] = {**info.get(name, {}),
                       "test_metric": centroid_accuracy(emb, labels[test]),
                       "other_text_cosine": float(cos.mean())}
    base = table.get("fp32 onnx", table[next(iter(table))])["test_metric"]
    for row in table.values():
        row["test_metric_drop_points"] = 100 * (base - row["test_metric"])
    for batch in (1, 8):
        one = {k: v[:batch] for k, v in test_feeds.items()}
        p50, medians = interleaved_p50(runs_by, one, runs)
        for name, row in table.items():
            row[f"p50_ms_b{batch}"] = p50[name]
            row[f"time_vs_nncf_b{batch}"] = paired_ratio(medians, name, "nncf int8 openvino")
    return {"model": SPEC, "task": "man-page section, 6 classes", "metric": "centroid_accuracy",
            "labelled": len(labels), "test_examples": len(test), "sets": sizes,
            "rows": table}


def print_table(t: dict) -> None:
    print(f"\nMiniLM-L6 on a labelled task ({t['task']}, {t['metric']}): "
          f"{t['labelled']} labelled sentences, {t['test_examples']} of them held back for "
          "these figures; other-kind text: stdlib docstrings")
    print(f"{'row':<38} {'test acc':>8} {'drop pt':>7} {'other cos':>9} {'MiB':>6} "
          f"{'b1 ms':>6} {'b1/nncf':>7} {'b8 ms':>6} {'b8/nncf':>7}  plan")
    for name, r in t["rows"].items():
        size = f"{r['bytes'] / 2**20:6.1f}" if r.get("bytes") else f"{'—':>6}"
        plan = r.get("plan")
        plan_text = (f"drop {len(plan['drop'])}, prune {plan['prune']}, {plan['precision']}"
                     if plan else "")
        print(f"{name:<38} {r['test_metric']:8.4f} {r['test_metric_drop_points']:7.2f} "
              f"{r['other_text_cosine']:9.4f} {size} {r['p50_ms_b1']:6.2f} "
              f"{r['time_vs_nncf_b1']['median_ratio']:7.3f} {r['p50_ms_b8']:6.2f} "
              f"{r['time_vs_nncf_b8']['median_ratio']:7.3f}  {plan_text}")
