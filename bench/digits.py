"""A small CNN trained here on scikit-learn's digits: prune 50% of its channels, heal, INT8.

    python bench/digits.py [--json] [--prune 0.5] [--heal-steps 400] [--epochs 30]

Trains the CNN (fixed seed) on 70% of the 1797 digits, then compiles it with layerwise four
ways through `layerwise.compile` on the ONNX target: fp32; pruned; pruned + healed
(distillation from the fp32 model on the training images, no labels); pruned + healed + INT8
(calibrated on the training images). Prints test accuracy (against the true labels), the
parameter and FLOP ratios from the manifests, and ONNX Runtime p50 at batch 1, all measured
in this run, with torch eager of the unpruned model as the baseline.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch
from torch import nn

import layerwise
from layerwise.api import CompileOptions, ProfileOptions
from layerwise.runtime import open_runner


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(1, 32), block(32, 64), nn.MaxPool2d(2),
                                      block(64, 128), block(128, 128), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128 * 2 * 2, 128), nn.ReLU(),
                                  nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.5)[:, None]
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    cut = int(0.7 * len(x))
    return x[idx[:cut]], d.target[idx[:cut]], x[idx[cut:]], d.target[idx[cut:]]


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt)).split(64):
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(bundle: Path, x: np.ndarray, y: np.ndarray) -> float:
    m = json.loads((bundle / "manifest.json").read_text())
    runner = open_runner(m["target"], bundle / m["model"]["file"])
    pred = np.concatenate([runner.run({"x": x[i:i + 64]})[0].argmax(1)
                           for i in range(0, len(x), 64)])
    return float((pred == y).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--prune", type=float, default=0.5)
    p.add_argument("--heal-steps", type=int, default=400)
    p.add_argument("--epochs", type=int, default=30)
    args = p.parse_args()
    xtr, ytr, xte, yte = digits()
    model = train(DigitsCNN(), xtr, ytr, args.epochs)
    with torch.no_grad():
        eager_acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        torch.save(model.state_dict(), tmp / "digits.pt")
        (tmp / "digits_model.py").write_text(textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
            import torch
            from digits import DigitsCNN

            def factory():
                m = DigitsCNN()
                m.load_state_dict(torch.load({str(tmp / "digits.pt")!r}))
                return m.eval(), {{"x": torch.zeros(2, 1, 8, 8)}}, "vision"
        """))
        spec = f"{tmp / 'digits_model.py'}:factory"
        np.savez(tmp / "train.npz", x=xtr)
        plans = {
            "fp32": {},
            "pruned": {"prune": args.prune, "prune_criterion": "taylor"},
            "pruned+healed": {"prune": args.prune, "prune_criterion": "taylor",
                              "heal_steps": args.heal_steps, "heal_lr": 1e-3},
            "pruned+healed+int8": {"prune": args.prune, "prune_criterion": "taylor",
                                   "heal_steps": args.heal_steps, "heal_lr": 1e-3,
                                   "precision": "int8"},
        }
        rows = {}
        for name, extra in plans.items():
            out = tmp / name
            m = layerwise.compile(spec, CompileOptions(out=str(out), data=str(tmp / "train.npz"),
                                                       db="none", **extra))
            prof = layerwise.profile(str(out), ProfileOptions(
                runs=300, warmup=30, threads=1, batch=1, db="none",
                baseline="eager" if name == "fp32" else None, baseline_spec=spec))
            heal = next((q for q in m["plan"]["passes"] if q["name"] == "heal"), None)
            rows[name] = {"accuracy": accuracy(out, xte, yte), "params": m["sizes"]["params"],
                          "flops": m["sizes"]["flops"], "p50_ms": prof["latency_ms"]["p50"],
                          "heal": heal and {k: heal[k] for k in ("quality_before",
                                                                 "quality_after", "seconds")}}
            if name == "fp32":
                eager_ms = prof["baseline"]["latency_ms"]["p50"]
    base = rows["fp32"]
    for r in rows.values():
        r["accuracy_drop_points"] = 100 * (base["accuracy"] - r["accuracy"])
        r["params_ratio"] = r["params"] / base["params"]
        r["flops_ratio"] = r["flops"] / base["flops"]
        r["latency_ratio"] = r["p50_ms"] / base["p50_ms"]
        r["speedup_vs_eager"] = eager_ms / r["p50_ms"]
    out = {"model": "DigitsCNN (trained here on sklearn digits)", "test_images": len(yte),
           "eager_accuracy": eager_acc, "eager_p50_ms": eager_ms, "prune": args.prune,
           "heal_steps": args.heal_steps, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"DigitsCNN on {len(yte)} held-out digits; torch eager accuracy {eager_acc:.4f}, "
          f"p50 {eager_ms:.3f} ms (batch 1, 1 thread)")
    print(f"{'plan':<20} {'acc':>7} {'drop pt':>8} {'params':>7} {'FLOPs':>7} {'p50 ms':>8} "
          f"{'vs fp32':>8} {'vs eager':>9}")
    for name, r in rows.items():
        print(f"{name:<20} {r['accuracy']:7.4f} {r['accuracy_drop_points']:8.2f} "
              f"{r['params_ratio']:7.3f} {r['flops_ratio']:7.3f} {r['p50_ms']:8.3f} "
              f"{r['latency_ratio']:8.3f} {r['speedup_vs_eager']:9.2f}")


if __name__ == "__main__":
    main()
