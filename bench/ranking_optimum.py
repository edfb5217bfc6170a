"""How close is the search's drop order to the best possible? MiniLM on the labelled man-page
task: every set of 1, 2 and 3 blocks dropped (unhealed) scored by the task metric on the
deciding half of --eval, against the sets the search's orders pick — the ensemble
importance ranking and the greedy order by measured task damage (what the search uses with
a task metric) — and on the held-back half, which no order saw.

    python bench/man_sections.py TASK --per-class 100
    python bench/ranking_optimum.py TASK [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from layerwise import api
from layerwise.compiler.passes.drop_layers import drop_layers
from layerwise.judge import make_judge
from layerwise.options import CompileOptions
from layerwise.plan import Search, split

SPEC = "zoo:minilm-l6"


def _run(ir, batches) -> np.ndarray:
    return np.concatenate([ir.run(b.inputs)[0].numpy() for b in batches])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from layerwise.api import _load_data, load_source

    source = load_source(SPEC)
    ir = api.lift(SPEC)
    opts = CompileOptions(target="onnx", out="unused", data=str(args.task / "data.txt"),
                          eval=str(args.task / "eval.tsv"), max_drop="1%", confidence=0.0)
    data = _load_data(opts, ir, source, lambda _: None)
    labelled = _load_data(opts, ir, source, lambda _: None, opts.eval)
    batches, held = split(data)
    judge = make_judge(held, labelled, None, classify=False, confidence=0.0)
    s = Search(SPEC, ir, opts, batches, judge, lambda _: None)
    blocks = [b.path for b in ir.layers if b.block]
    t0 = time.perf_counter()
    from layerwise.analysis import analyze

    res = analyze(ir, batches, "auto")
    ensemble = [p for p in reversed(res["ranking"]) if p in set(res["droppable"])]
    greedy = s.task_order(ensemble)
    order_s = time.perf_counter() - t0

    def score(drop: tuple[str, ...]) -> dict:
        small = drop_layers(ir, list(drop)) if drop else ir
        return {"decide": judge.score(_run(small, judge.batches), judge.batches),
                "test": judge.score(_run(small, judge.test), judge.test)}

    rows = {}
    for k in (1, 2, 3):
        every = {d: score(d) for d in itertools.combinations(blocks, k)}
        best = max(every, key=lambda d: every[d]["decide"])
        rows[k] = {
            "optimum": {"drop": list(best), **every[best]},
            "ensemble": {"drop": ensemble[:k], **every[tuple(sorted(ensemble[:k],
                                                                    key=blocks.index))]},
            "greedy": {"drop": greedy[:k], **every[tuple(sorted(greedy[:k],
                                                                key=blocks.index))]},
            "rank_of_greedy": 1 + sorted(every.values(), key=lambda v: -v["decide"]).index(
                every[tuple(sorted(greedy[:k], key=blocks.index))]),
            "sets": len(every)}
    out = {"model": SPEC, "metric": judge.metric_name, "orders_s": order_s, "rows": rows,
           "reference": {k: judge.reference[k] for k in ("search", "test")}}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{SPEC}, {out['metric']} on the deciding half (test: the held-back half); "
          f"original {out['reference']['search']:.4f} / {out['reference']['test']:.4f}; "
          f"orders in {order_s:.0f} s")
    print(f"{'drops':>5} {'order':<9} {'decide':>7} {'test':>7}  blocks")
    for k, r in rows.items():
        for name in ("optimum", "ensemble", "greedy"):
            v = r[name]
            print(f"{k:>5} {name:<9} {v['decide']:7.4f} {v['test']:7.4f}  {v['drop']}")
        print(f"      greedy's set ranks {r['rank_of_greedy']} of {r['sets']}")


if __name__ == "__main__":
    main()
