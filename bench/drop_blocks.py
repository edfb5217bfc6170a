"""Which blocks to drop from MiniLM: layerwise's ensemble against the baselines, same run.

    python bench/drop_blocks.py [--json] [--sentences 256] [--heal-steps 200]

Scores are computed on one half of real English sentences; the figure is the mean cosine of
the dropped model's embeddings to the original's on the other (held-out) half, for 1, 2 and
3 dropped blocks chosen by: our ensemble (auto method set), ShortGPT's block influence alone,
the last blocks, random (mean of 5 seeds), and the exhaustive optimum (6 blocks make every
subset computable). "ours + heal" distils the original into our dropped model (the heal
pass) on the scoring half only, then measures on the held-out half like the others.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from importance import english_sentences

from layerwise.analysis import analyze
from layerwise.compiler.frontend import lift
from layerwise.compiler.passes.drop_layers import drop_layers
from layerwise.compiler.passes.heal import heal
from layerwise.sources import load_source


def batches_of(tokenizer, sentences: list[str], size: int = 16) -> list[dict]:
    out = []
    for i in range(0, len(sentences), size):
        enc = tokenizer(sentences[i:i + size], padding="max_length", truncation=True,
                        max_length=32, return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def mean_cosine(ir, drop: list[str], held: list[dict], ref: torch.Tensor) -> float:
    model = drop_layers(ir, drop) if drop else ir
    emb = torch.cat([model.run(b)[0] for b in held])
    return float(torch.nn.functional.cosine_similarity(emb, ref, dim=1).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--heal-steps", type=int, default=200)
    p.add_argument("--heal-lr", type=float, default=1e-4)
    args = p.parse_args()
    src = load_source("zoo:minilm-l6")
    ir = lift(src)
    sentences = english_sentences(args.sentences)
    half = len(sentences) // 2
    scored, held = batches_of(src.tokenizer, sentences[:half]), batches_of(
        src.tokenizer, sentences[half:])
    ref = torch.cat([ir.run(b)[0] for b in held])
    res = analyze(ir, scored, "auto")
    blocks = res["blocks"]
    ours = list(reversed(res["ranking"]))  # least important first
    influence = sorted(blocks, key=lambda b: res["scores"]["block_influence"][b]) \
        if "block_influence" in res["scores"] else None
    if influence is None:
        bi = analyze(ir, scored, ["block_influence"])
        influence = sorted(blocks, key=lambda b: bi["scores"]["block_influence"][b])
    cache: dict[tuple, float] = {}

    def cos(drop) -> float:
        key = tuple(sorted(drop))
        if key not in cache:
            cache[key] = mean_cosine(ir, list(key), held, ref)
        return cache[key]

    rows = []
    for k in (1, 2, 3):
        rand = [cos(random.Random(seed).sample(blocks, k)) for seed in range(5)]
        best = max(itertools.combinations(blocks, k), key=cos)
        rows.append({
            "dropped": k,
            "ours": cos(ours[:k]), "ours_blocks": ours[:k],
            "block_influence": cos(influence[:k]), "block_influence_blocks": influence[:k],
            "last_blocks": cos(blocks[-k:]),
            "random_mean5": sum(rand) / len(rand),
            "exhaustive_optimum": cos(best), "optimum_blocks": list(best),
        })
        if args.heal_steps:
            healed = heal(drop_layers(ir, ours[:k]), ir, scored, steps=args.heal_steps,
                          lr=args.heal_lr)
            emb = torch.cat([healed.run(b)[0] for b in held])
            rows[-1]["ours_healed"] = float(
                torch.nn.functional.cosine_similarity(emb, ref, dim=1).mean())
            rows[-1]["heal_seconds"] = healed.annotations["passes"][-1]["seconds"]
    out = {"model": "zoo:minilm-l6", "scored_sentences": half,
           "held_out_sentences": len(sentences) - half,
           "ensemble_methods": res["methods"], "heal_steps": args.heal_steps, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"MiniLM-L6: mean cosine to the original embeddings on {out['held_out_sentences']} "
          f"held-out sentences (scores from {half} others)")
    print(f"{'drop':>4} {'ours':>7} {'+heal':>7} {'block infl.':>11} {'last':>7} "
          f"{'random':>7} {'optimum':>8}  ours / optimum blocks")
    for r in rows:
        print(f"{r['dropped']:>4} {r['ours']:7.4f} {r.get('ours_healed', float('nan')):7.4f} "
              f"{r['block_influence']:11.4f} "
              f"{r['last_blocks']:7.4f} {r['random_mean5']:7.4f} {r['exhaustive_optimum']:8.4f}"
              f"  {[b.rsplit('.', 1)[-1] for b in r['ours_blocks']]} / "
              f"{[b.rsplit('.', 1)[-1] for b in r['optimum_blocks']]}")


if __name__ == "__main__":
    main()
