"""Does healing generalise? MiniLM with one block dropped, unhealed and healed (hidden-state
distillation on the unlabelled man-page sentences), scored on the held-back half of the
labelled man-page task and by cosine to FP32 on text of another kind (docstrings).

    python bench/man_sections.py TASK --per-class 100
    python bench/heal_check.py TASK [--block bert.encoder.layer.2] [--budget 150s]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from layerwise import api
from layerwise.compiler.plan.metrics import centroid_accuracy
from layerwise.runtime import open_runner
from layerwise.sources import load_source

SPEC = "zoo:minilm-l6"


def _encode(tok, lines: list[str]) -> dict[str, np.ndarray]:
    e = tok(lines, padding="max_length", truncation=True, max_length=32, return_tensors="np")
    return {k: e[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def _embed(bundle: Path, feeds: dict) -> np.ndarray:
    run = open_runner("openvino", bundle / "model.xml")
    n = len(feeds["input_ids"])
    return np.concatenate([run.run({k: v[i:i + 8] for k, v in feeds.items()})[0]
                           for i in range(0, n - n % 8, 8)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", type=Path)
    ap.add_argument("--block", default="bert.encoder.layer.2")
    ap.add_argument("--budget", default="150s")
    ap.add_argument("--out", type=Path, default=Path("out/heal-check"))
    args = ap.parse_args()
    rows = [ln.rsplit("\t", 1) for ln in (args.task / "eval.tsv").read_text().splitlines()]
    names = sorted({s for _, s in rows})
    labels = np.array([names.index(s) for _, s in rows])
    tok = load_source(SPEC).tokenizer
    feeds = _encode(tok, [t for t, _ in rows])
    other = _encode(tok, (args.task / "other.txt").read_text().splitlines())
    # the half a plan search never sees: the odd batches of 8
    test = np.concatenate([np.arange(8 * k, 8 * k + 8) for k in range(1, len(rows) // 8, 2)])
    plans = {"fp32": {}, f"drop {args.block}": {"drop": args.block},
             f"drop {args.block} + heal": {"drop": args.block, "heal_steps": 400,
                                            "heal_budget": args.budget, "heal_lr": 1e-4}}
    scores = {}
    for i, (name, kw) in enumerate(plans.items()):
        out = args.out / str(i)
        m = api.compile(SPEC, api.CompileOptions(target="openvino", out=str(out), force=True,
                                                 db="none", data=str(args.task / "data.txt"),
                                                 **kw))
        heal = [p for p in m["plan"]["passes"] if p["name"] == "heal"]
        if heal:
            print("heal record:", {k: heal[0][k] for k in (
                "steps", "examples", "held_examples", "matched_blocks", "seconds",
                "kept_step", "quality_before", "quality_after")})
        acc = centroid_accuracy(_embed(out, {k: v[test] for k, v in feeds.items()}),
                                labels[test])
        scores[name] = (acc, _embed(out, other))
    ref = scores["fp32"][1]
    for name, (acc, emb) in scores.items():
        cos = ((emb * ref).sum(1) / np.linalg.norm(emb, axis=1)
               / np.linalg.norm(ref, axis=1)).mean()
        print(f"{name:<40} test centroid accuracy {acc:.4f}   other-text cosine {cos:.4f}")


if __name__ == "__main__":
    main()
