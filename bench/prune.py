"""Structured pruning: params, FLOPs and ONNX Runtime latency, pruned against unpruned.

    python bench/prune.py [--json] [--ratios 0.3,0.5] [--criteria l2,activation,taylor]
                          [--runs 50] [--images 64]

For timm:resnet18 (random weights) and zoo:mobilenet-v2 (real ImageNet weights), each ratio
and criterion: the params and FLOPs ratios from the layer table, and the p50 latency of the
ONNX Runtime artifact at batch 1 against the unpruned artifact timed in the same run
(interleaved, so machine load hits both alike; still noisy on a shared machine). For
MobileNetV2 also the top-1 agreement with the unpruned model on held-out photo crops (no
healing: it shows what pruning costs before any fine-tuning). The data-driven criteria
score on other crops than those evaluated. For zoo:minilm-l6 (`--minilm`, real weights):
heads and MLP hidden units pruned at each ratio, the mean cosine of the sentence embeddings
to the unpruned model's on held-out real sentences, and the same ratios (batch 1, 32 tokens).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from layerwise.compiler.frontend import lift
from layerwise.compiler.passes import run_passes
from layerwise.compiler.passes.prune import prune
from layerwise.images import photo_crops
from layerwise.runtime import open_runner
from layerwise.runtime.profile import stats_ms, time_calls
from layerwise.sources import load_source
from layerwise.targets import onnx as onnx_target


def flops(ir) -> int:
    return ir.flops


def export(ir, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    entry = onnx_target.emit(run_passes(ir, ["legalize_views"]), out)
    return open_runner("onnx", out / entry["file"])


def latencies(runners: list, x, runs: int) -> list[float]:
    """p50 ms of each runner on feeds `x` (an array for input "x", or a dict), timed in
    interleaved rounds of 10 calls."""
    feeds = x if isinstance(x, dict) else {"x": x}
    times: list[list[float]] = [[] for _ in runners]
    for r in runners:
        time_calls(lambda r=r: r.run(feeds), 0, 5)
    for _ in range(max(1, runs // 10)):
        for i, r in enumerate(runners):
            times[i] += time_calls(lambda r=r: r.run(feeds), 10, 1)
    return [stats_ms(t)["p50"] for t in times]


def top1(runner, images: np.ndarray) -> np.ndarray:
    return np.concatenate([runner.run({"x": images[i:i + 1]})[0].argmax(1)
                           for i in range(len(images))])


def minilm_rows(ratios: list[float], criteria: list[str], runs: int, tmp: Path,
                multiple: int = 1) -> list:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from importance import english_sentences

    src = load_source("zoo:minilm-l6")
    ir = lift(src)
    sentences = english_sentences(96)

    def batch(texts: list[str]) -> dict:
        enc = src.tokenizer(texts, padding="max_length", truncation=True, max_length=32,
                            return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    calib = [batch(sentences[i:i + 16]) for i in range(0, 48, 16)]
    held = [batch(sentences[i:i + 16]) for i in range(48, 96, 16)]
    ref = torch.cat([ir.run(b)[0].flatten(1) for b in held])
    one = {k: v[:1].numpy() for k, v in held[0].items()}
    base = export(ir, tmp / "minilm")
    rows = []
    for ratio in ratios:
        for crit in criteria:
            out = prune(ir, ratio, crit, batches=calib, multiple=multiple)
            emb = torch.cat([out.run(b)[0].flatten(1) for b in held])
            runner = export(out, tmp / f"minilm-{ratio}-{crit}")
            ms = latencies([base, runner], one, runs)
            rows.append({"model": "zoo:minilm-l6", "ratio": ratio, "criterion": crit,
                         "params_ratio": out.params / ir.params,
                         "flops_ratio": flops(out) / flops(ir),
                         "latency_ms": {"unpruned": ms[0], "pruned": ms[1]},
                         "latency_ratio": ms[1] / ms[0],
                         "mean_cosine": float(torch.nn.functional.cosine_similarity(
                             emb, ref, dim=1).mean())})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--ratios", default="0.3,0.5")
    p.add_argument("--criteria", default="l2,activation,taylor")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--models", default="timm:resnet18,zoo:mobilenet-v2",
                   help="vision models ('' for none)")
    p.add_argument("--minilm", action="store_true", help="also prune zoo:minilm-l6")
    p.add_argument("--multiple", type=int, default=8,
                   help="round kept channels up to a multiple of this (prune's `multiple`)")
    args = p.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    criteria = args.criteria.split(",")
    crops = photo_crops(2 * args.images, seed=1)
    calib = [{"x": torch.from_numpy(crops[i:i + 8])} for i in range(0, args.images, 8)]
    held = crops[args.images:]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in filter(None, args.models.split(",")):
            ir = lift(load_source(spec))
            base = export(ir, Path(tmp) / spec.replace(":", "_"))
            base_top1 = top1(base, held) if spec.startswith("zoo:") else None
            for ratio in ratios:
                for crit in criteria:
                    out = prune(ir, ratio, crit, batches=calib, multiple=args.multiple)
                    runner = export(out, Path(tmp) / f"{spec.replace(':', '_')}-{ratio}-{crit}")
                    ms = latencies([base, runner], crops[:1], args.runs)
                    row = {"model": spec, "ratio": ratio, "criterion": crit,
                           "multiple": args.multiple,
                           "params_ratio": out.params / ir.params,
                           "flops_ratio": flops(out) / flops(ir),
                           "latency_ms": {"unpruned": ms[0], "pruned": ms[1]},
                           "latency_ratio": ms[1] / ms[0]}
                    if base_top1 is not None:
                        row["top1_agreement"] = float((top1(runner, held) == base_top1).mean())
                    rows.append(row)
                    if not args.json:
                        agree = row.get("top1_agreement")
                        print(f"{spec:18s} ratio {ratio:.2f} {crit:10s} params "
                              f"{row['params_ratio']:.3f} flops {row['flops_ratio']:.3f} "
                              f"latency {ms[1]:.2f}/{ms[0]:.2f} ms = {row['latency_ratio']:.3f}"
                              + (f"  top1 agreement {agree:.3f}" if agree is not None else ""),
                              flush=True)
        if args.minilm:
            for row in minilm_rows(ratios, criteria, args.runs, Path(tmp), args.multiple):
                rows.append(row)
                if not args.json:
                    print(f"zoo:minilm-l6      ratio {row['ratio']:.2f} {row['criterion']:10s} "
                          f"params {row['params_ratio']:.3f} flops {row['flops_ratio']:.3f} "
                          f"latency ratio {row['latency_ratio']:.3f}  mean cosine "
                          f"{row['mean_cosine']:.4f}", flush=True)
    if args.json:
        print(json.dumps({"runs": args.runs, "held_out_images": len(held), "results": rows},
                         indent=1))


if __name__ == "__main__":
    main()
