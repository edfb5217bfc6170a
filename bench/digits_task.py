"""A CNN on a real labelled image task, side by side in one run (called by bench/compress.py).

The task: scikit-learn's handwritten digits (1797 real 8x8 scans, 10 classes), upscaled to
32x32. The model: a small residual CNN (stem, six residual blocks, pooled linear head)
trained here for a fixed number of steps on 1000 of the digits; the other 797 are --eval
(the search decides on half, the other half is never seen by it and gives the figures).
The rows: torch eager FP32, FP32 on onnxruntime and OpenVINO, NNCF's INT8 (default preset)
and its quantize_with_accuracy_control at 1 point, and layerwise's plan at several --max-drop
bounds on accuracy, for OpenVINO and onnxruntime; test accuracy, p50 at batch 1 and 8 in
interleaved rounds, each also as the median per-round ratio to NNCF's INT8.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from layerwise import api
from layerwise.compiler.plan.metrics import accuracy

BOUNDS = ("0.5%", "1%", "2%")
SIZE = 32


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class DigitsNet(nn.Module):
    """Stem to 32 channels at 16x16, three blocks, a stride-2 conv to 64 at 8x8, three blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(32), nn.ReLU())
        self.stage1 = nn.Sequential(*(Block(32) for _ in range(3)))
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU())
        self.stage2 = nn.Sequential(*(Block(64) for _ in range(3)))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(h.mean((2, 3)))


def digits_net():
    """The factory layerwise loads (`bench/digits_task.py:digits_net`, weights by --weights)."""
    return DigitsNet().eval(), {"x": torch.zeros(2, 1, SIZE, SIZE)}, "vision"


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as float32 [N, 1, 32, 32] in [0, 1] (bilinear upscale) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear",
                                        align_corners=False)
    return x.numpy(), d.target.astype(np.int64)


def train(x: np.ndarray, y: np.ndarray, steps: int = 600, seed: int = 0) -> DigitsNet:
    torch.manual_seed(seed)
    model = DigitsNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (64,), generator=gen)
        shift = torch.randint(-2, 3, (2,), generator=gen)  # small translations
        xb = torch.roll(xt[idx], shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
        loss = nn.functional.cross_entropy(model(xb), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def digits_task(tmp: Path, runs: int, *, bounds=BOUNDS, targets=("openvino", "onnx"),
                steps: int = 600, budgeted: tuple[str, str] = ("1%", "5m")) -> dict:
    """Train, build every row, score and time it; returns the table as plain values."""
    from compress import bundle_run, interleaved_p50, nncf_rows, ov_run, paired_ratio

    x, y = digits()
    perm = np.random.default_rng(0).permutation(len(y))
    tr, ev = perm[:1000], perm[1000:]
    t0 = time.perf_counter()
    model = train(x[tr], y[tr], steps)
    train_s = time.perf_counter() - t0
    weights = tmp / "digits.pt"
    torch.save(model.state_dict(), weights)
    np.savez(tmp / "data.npz", x=x[tr][:256])
    np.savez(tmp / "eval.npz", x=x[ev], labels=y[ev])
    spec = f"{Path(__file__).resolve()}:digits_net"
    src = {"weights": str(weights)}
    # --eval is read in batches of 8 and the search decides on the even ones
    batches = [np.arange(8 * k, min(8 * k + 8, len(ev))) for k in range(-(-len(ev) // 8))]
    decide, test = np.concatenate(batches[0::2]), np.concatenate(batches[1::2])
    xe, ye = x[ev], y[ev]
    runs_by = {"torch eager fp32": lambda f: model(torch.from_numpy(f["x"])).detach().numpy()}
    info = {"torch eager fp32": {}}

    def compile_row(name: str, **kw) -> dict:
        t0 = time.perf_counter()
        out = tmp / name.replace(" ", "-")
        from layerwise.spec import SourceOptions

        m = api.compile(spec, api.CompileOptions(out=str(out), db="none", **kw),
                        SourceOptions(**src))
        runs_by[name] = bundle_run(out)
        info[name] = {"bytes": m["sizes"]["model_bytes"], "compile_s": time.perf_counter() - t0}
        return m

    for target in targets:
        compile_row(f"fp32 {target}", target=target)
    calib = [{"x": x[tr][i:i + 1]} for i in range(256)]
    validation = ([{"x": xe[b]} for b in batches[0::2]], ye[decide])
    for name, (q, seconds) in nncf_rows(tmp / "fp32-onnx" / "model.onnx", calib,
                                    validation, accuracy).items():
        runs_by[name] = ov_run(q, static=True)
        info[name] = {"compile_s": seconds}
    plans = [(f"layerwise plan {b} {t}", t, b, None) for t in targets for b in bounds]
    if budgeted:  # the same bound with a search budget of its own, not the default's 3x
        plans += [(f"layerwise plan {budgeted[0]} {t} {budgeted[1]}", t, budgeted[0],
                   budgeted[1]) for t in targets]
    for target in targets:  # what one plain compile gives: the search's time is against it
        compile_row(f"layerwise int8 {target}", target=target, precision="int8",
                    data=str(tmp / "data.npz"))
    for name, target, bound, budget in plans:
        m = compile_row(name, target=target, data=str(tmp / "data.npz"),
                        eval=str(tmp / "eval.npz"), max_drop=bound, search_budget=budget)
        chosen = m["search"]["chosen"]
        info[name].update(
            plan={k: chosen[k] for k in ("drop", "prune", "precision", "keep_fp32")},
            search_s=m["search"]["wall_s"], budget_basis=m["search"]["budget_basis"],
            compile_vs_plain=info[name]["compile_s"] / info[f"layerwise int8 {target}"][
                "compile_s"])
    table = {}
    with torch.no_grad():
        for name, run in runs_by.items():
            out = np.concatenate([run({"x": xe[test][i:i + 8]})
                                  for i in range(0, len(test) - len(test) % 8, 8)])
            table[name] = {**info[name], "test_accuracy": accuracy(out, ye[test][:len(out)])}
        base = table["fp32 onnx"]["test_accuracy"]
        for row in table.values():
            row["test_drop_points"] = 100 * (base - row["test_accuracy"])
        for batch in (1, 8):
            p50, medians = interleaved_p50(runs_by, {"x": xe[test][:batch]}, runs)
            for name, row in table.items():
                row[f"p50_ms_b{batch}"] = p50[name]
                row[f"time_vs_nncf_b{batch}"] = paired_ratio(medians, name, "nncf int8 openvino")
                row[f"time_vs_eager_b{batch}"] = paired_ratio(medians, name, "torch eager fp32")
    return {"model": "residual CNN, 6 blocks, trained here", "task": "sklearn digits at 32x32",
            "train_examples": len(tr), "train_s": train_s, "eval_examples": len(ev),
            "test_examples": len(test), "rows": table}


def print_table(t: dict) -> None:
    print(f"\n{t['model']} on {t['task']}: trained on {t['train_examples']} in "
          f"{t['train_s']:.0f} s, {t['eval_examples']} labelled for --eval, "
          f"{t['test_examples']} of them held back for these figures")
    print(f"{'row':<34} {'test acc':>8} {'drop pt':>7} {'MiB':>5} {'b1 ms':>6} {'b1/nncf':>7} "
          f"{'b1/eager':>8} {'b8 ms':>6} {'b8/nncf':>7} {'compile':>7}  plan")
    for name, r in t["rows"].items():
        size = f"{r['bytes'] / 2**20:5.2f}" if r.get("bytes") else f"{'—':>5}"
        plan = r.get("plan")
        text = (f"drop {len(plan['drop'])}, prune {plan['prune']}, {plan['precision']}; "
                f"compile {r['compile_vs_plain']:.1f}x a plain int8 one" if plan else "")
        took = f"{r['compile_s']:6.0f}s" if r.get("compile_s") else f"{'—':>7}"
        print(f"{name:<34} {r['test_accuracy']:8.4f} {r['test_drop_points']:7.2f} {size} "
              f"{r['p50_ms_b1']:6.3f} {r['time_vs_nncf_b1']['median_ratio']:7.3f} "
              f"{r['time_vs_eager_b1']['median_ratio']:8.3f} {r['p50_ms_b8']:6.3f} "
              f"{r['time_vs_nncf_b8']['median_ratio']:7.3f} {took}  {text}")
