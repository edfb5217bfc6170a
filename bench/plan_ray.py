"""The plan search in-process against the same search on a local Ray cluster (2 workers by
default), rounds interleaved on this host: wall-clock of the search and of the whole compile,
the speed-up, and whether both chose the same plan.

    python bench/plan_ray.py [--rounds 2] [--workers 2] [--heal-steps 0] [--device rpi5]
                             [--torch-threads N] [--spec SPEC --data DATA] [--json]

The default model is a residual MLP defined here (8 blocks, 3 of them near-identity) with
random data. Each Ray worker runs torch on one thread; `--torch-threads` sets this process's
(the in-process search and the driver's own steps; default: torch's). The cluster is started
once before the rounds (its start time is printed apart); each Ray round reuses it, as
`compile --executor ray` does when Ray is already initialised. Where the latency is timed on
this host (no --device), the choice between plans whose latencies lie close may differ from
round to round, whichever the executor.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from layerwise import api


class _Block(nn.Module):
    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.fc1, self.fc2, self.scale = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.fc2(torch.relu(self.fc1(x)))


class _Net(nn.Module):
    def __init__(self, dim: int = 128, blocks: int = 8) -> None:
        super().__init__()
        scales = [0.02 if i % 3 == 1 else 1.0 for i in range(blocks)]
        self.blocks = nn.ModuleList([_Block(dim, s) for s in scales])
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def residual_mlp():
    """The default model (a `FILE.py:factory` source)."""
    torch.manual_seed(0)
    return _Net().eval(), {"x": torch.randn(2, 128)}, "tabular"


def one(spec: str, data: str, executor: str, args, tmp: Path) -> dict:
    opts = api.CompileOptions(out=str(tmp / executor), force=True, data=data, max_drop="2%",
                              search_budget="30m", db="none", executor=executor,
                              heal_steps=args.heal_steps, device=args.device)
    t0 = time.perf_counter()
    m = api.compile(spec, opts)
    s = m["search"]
    c = s["chosen"]
    return {"executor": executor, "compile_s": time.perf_counter() - t0, "search_s": s["wall_s"],
            "plan": [sorted(c["drop"]), c["prune"], c["precision"], c["keep_fp32"]],
            "candidates": sum(x["latency_ms"] is not None for x in s["candidates"]),
            "structural": sum(x["latency_ms"] is None for x in s["candidates"]),
            "workers": s["executor"]["workers"], "start_s": s["executor"].get("start_s"),
            "tasks": s["executor"].get("tasks"),
            "cancelled": s["executor"].get("cancelled")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--heal-steps", type=int, default=0)
    p.add_argument("--device", default=None, help="predict latency for this device profile")
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--spec", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import ray

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        spec, data = args.spec, args.data
        if spec is None:
            spec, data = f"{Path(__file__).resolve()}:residual_mlp", str(tmp / "x.npz")
            rng = np.random.default_rng(0)
            np.savez(data, x=rng.normal(size=(128, 128)).astype(np.float32))
        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        start_s = time.perf_counter() - t0
        rows = []
        try:
            for _ in range(args.rounds):
                for executor in ("local", "ray"):
                    rows.append(one(spec, data, executor, args, tmp))
        finally:
            ray.shutdown()
    local = [r for r in rows if r["executor"] == "local"]
    dist = [r for r in rows if r["executor"] == "ray"]
    summary = {
        "spec": spec, "workers": args.workers, "heal_steps": args.heal_steps,
        "device": args.device or "this host", "ray_start_s": start_s,
        "torch_threads": torch.get_num_threads(),
        "search_s": {"local": [r["search_s"] for r in local], "ray": [r["search_s"] for r in dist]},
        "compile_s": {"local": [r["compile_s"] for r in local],
                      "ray": [r["compile_s"] for r in dist]},
        "speedup_search": float(np.median([r["search_s"] for r in local])
                                / np.median([r["search_s"] for r in dist])),
        "speedup_compile": float(np.median([r["compile_s"] for r in local])
                                 / np.median([r["compile_s"] for r in dist])),
        "same_plan": all(r["plan"] == local[0]["plan"] for r in rows),
        "rows": rows}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"{'round':>5} {'executor':>8} {'search s':>9} {'compile s':>10} {'workers up s':>13} "
          f"{'measured':>9} {'structural':>11} {'tasks':>6} {'cancelled':>10}  plan")
    for i, r in enumerate(rows):
        up = "" if r["start_s"] is None else f"{r['start_s']:.1f}"
        print(f"{i // 2:5d} {r['executor']:>8} {r['search_s']:9.1f} {r['compile_s']:10.1f} "
              f"{up:>13} {r['candidates']:9d} {r['structural']:11d} {r['tasks'] or '':>6} "
              f"{'' if r['cancelled'] is None else r['cancelled']:>10}  {r['plan']}")
    print(f"Ray cluster start ({args.workers} CPUs): {start_s:.1f} s, not in the rows; torch "
          f"threads here: {torch.get_num_threads()}, on each worker: 1")
    print(f"speed-up with {args.workers} Ray workers (median local / median ray): search "
          f"{summary['speedup_search']:.2f}x, whole compile {summary['speedup_compile']:.2f}x;"
          f" same plan in every round: {summary['same_plan']}")


if __name__ == "__main__":
    main()
