"""Importance methods vs the true damage of dropping each block of zoo:minilm-l6.

True damage of a block = fidelity lost (1 - mean cosine of the sentence embeddings to the
original model's) when it alone is dropped with the compiler's drop_layers pass. Prints the
Spearman rho of every method's scores against it and each method's measured cost in
forward-pass equivalents; checks that the ensemble does at least as well as the best single
method under 3 passes and that the default set (no ablation, no SHAP) costs at most three
forward+backward passes.

    python bench/importance.py [--json] [--sentences 64] [--batch 16]
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import time

import torch


def english_sentences(n: int) -> list[str]:
    """Real English sentences: layerwise.text.stdlib_sentences, then more standard-library
    docstrings (same filter), deterministic for a Python version."""
    import importlib

    from layerwise.text import stdlib_sentences

    out = list(stdlib_sentences())
    seen = set(out)
    for name in ("functools", "itertools", "pathlib", "unittest", "email", "csv", "heapq",
                 "random", "statistics", "string", "shutil", "tempfile", "threading",
                 "subprocess", "zipfile", "contextlib", "dataclasses", "enum", "typing",
                 "inspect", "pickle", "sqlite3", "calendar", "fractions", "decimal"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [mod.__doc__ or ""] + [inspect.getdoc(getattr(mod, a)) or ""
                                      for a in sorted(dir(mod)) if not a.startswith("_")][:40]
        for doc in docs:
            for sent in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", doc)):
                words = sent.split()
                if (6 <= len(words) <= 40 and sent[:1].isupper() and sent.endswith(".")
                        and not re.search(r"[>{}\[\]=_()]|::", sent) and sent not in seen):
                    seen.add(sent)
                    out.append(sent)
                if len(out) >= n:
                    return out[:n]
    return out[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=32)
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    from layerwise.analysis import analyze
    from layerwise.analysis.ensemble import spearman
    from layerwise.analysis.methods import METHODS, get_method
    from layerwise.compiler.frontend import lift
    from layerwise.compiler.passes.drop_layers import drop_layers
    from layerwise.sources import SourceOptions, load_source

    src = load_source("zoo:minilm-l6", SourceOptions(seq_len=args.seq_len))
    ir = lift(src)
    sentences = english_sentences(args.sentences)
    enc = src.tokenizer(sentences, padding="max_length", truncation=True,
                        max_length=args.seq_len, return_tensors="pt")
    batches = [{"input_ids": enc["input_ids"][i:i + args.batch],
                "attention_mask": enc["attention_mask"][i:i + args.batch]}
               for i in range(0, len(sentences), args.batch)]

    # ground truth through the compiler pass (independent of the analysis gates)
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = torch.cat([ir.module()(**b) for b in batches])
        truth = {}
        for blk in [layer.path for layer in ir.layers if layer.block]:
            dropped = drop_layers(ir, [blk]).module()
            out = torch.cat([dropped(**b) for b in batches])
            truth[blk] = float(1 - torch.nn.functional.cosine_similarity(out, ref).mean())
    truth_s = time.perf_counter() - t0

    full = analyze(ir, batches, methods="all", history=None)
    default = analyze(ir, batches, methods="auto")
    default_names = [m for m in default["methods"]
                     if m not in ("layer_ablation", "shap_analysis")]
    lean = analyze(ir, batches, methods=default_names) if default_names != default["methods"] \
        else default
    unit = full["total_cost"]
    fb = (unit["shared_forward_seconds"] + unit["shared_backward_seconds"]) / \
        unit["forward_seconds"]
    paths = full["blocks"]
    t = [truth[p] for p in paths]
    rows = []
    for name in METHODS:
        if name not in full["scores"]:
            rows.append({"method": name, "rho": None, "cost": None,
                         "skipped": full["skipped"].get(name, "not run")})
            continue
        s = [full["scores"][name][p] for p in paths]
        rows.append({"method": name, "rho": spearman(s, t),
                     "cost": full["cost"][name]["forward_equivalents"],
                     "declared": get_method(name).info.cost(len(paths))})
    ens_rho = spearman([full["ensemble"][p] for p in paths], t)
    auto_rho = spearman([default["ensemble"][p] for p in paths], t)
    cheap = [r for r in rows if r["rho"] is not None and r["cost"] is not None
             and r["cost"] < 3.0 and r["rho"] == r["rho"]]
    best_cheap = max(cheap, key=lambda r: r["rho"]) if cheap else None
    lean_cost = lean["total_cost"]["forward_equivalents"]
    out = {
        "model": "zoo:minilm-l6", "sentences": len(sentences), "truth": truth,
        "truth_seconds": truth_s, "methods": rows,
        "ensemble_all": {"rho": ens_rho, "cost": unit["forward_equivalents"]},
        "ensemble_auto": {"rho": auto_rho, "methods": default["methods"],
                          "cost": default["total_cost"]["forward_equivalents"]},
        "best_under_3_passes": best_cheap,
        "forward_backward_cost": fb,
        "default_without_ablation_shap": {"methods": default_names, "cost": lean_cost,
                                          "ratio_to_fwd_bwd": lean_cost / fb},
        "checks": {
            "ensemble_all_ge_best_cheap": best_cheap is None or ens_rho >= best_cheap["rho"] - 1e-9,
            "ensemble_auto_ge_best_cheap": best_cheap is None
            or auto_rho >= best_cheap["rho"] - 1e-9,
            "default_cost_le_3_fwd_bwd": lean_cost <= 3 * fb,
        },
    }
    if args.json:
        print(json.dumps(out, indent=1, default=float))
        return 0
    print(f"zoo:minilm-l6, {len(sentences)} sentences; true damage (1 - cos) per dropped block:")
    for p in paths:
        print(f"  {p:28s} {truth[p]:.4f}")
    print(f"\n{'method':28s} {'rho':>6s} {'cost':>7s} {'declared':>8s}")
    for r in rows:
        if r["rho"] is None:
            print(f"{r['method']:28s}   skipped: {r['skipped'][:60]}")
        else:
            print(f"{r['method']:28s} {r['rho']:6.3f} {r['cost']:7.2f} {r['declared']:8.1f}")
    print(f"{'ensemble (all methods)':28s} {ens_rho:6.3f} {unit['forward_equivalents']:7.2f}")
    print(f"{'ensemble (auto)':28s} {auto_rho:6.3f} "
          f"{default['total_cost']['forward_equivalents']:7.2f}  {default['methods']}")
    if best_cheap:
        print(f"best single method under 3 passes: {best_cheap['method']} "
              f"rho {best_cheap['rho']:.3f}")
    print(f"one forward+backward = {fb:.2f} forward passes; default set without ablation/SHAP "
          f"costs {lean_cost:.2f} = {lean_cost / fb:.2f}x")
    for k, v in out["checks"].items():
        print(f"  {'ok  ' if v else 'FAIL'} {k}")
    return 0 if all(out["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
