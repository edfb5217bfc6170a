"""Activation ranges for the tflite target's full-integer int8, measured on the IR's graph.

One pass of the FX graph over the calibration batches records, per floating-point node: the
extremes, the mean of each input's own extremes (NNCF's `mean_minmax`: one outlier image does
not stretch the range for all), optionally a histogram (percentile, entropy, mse), and, for the
inputs of convolutions and linears, per-channel means (for bias correction: the mean output
shift that rounding a layer's weights adds is E[x] . (W - W_int8) per output channel).

The lowering reads a node's range where TFLite puts its int8 tensor: a convolution with a
folded batch norm and a fused ReLU6 takes the range of the ReLU6 node (after the activation).
A layer norm, which full-integer int8 runs as LiteRT's int8 MEAN, SUB, L2_NORMALIZATION, MUL
and ADD, also records the tensors between them, as `<node>.<step>` (layer_norm_steps; its
output is the getitem node's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from layerwise.base.errors import TargetError

aten = torch.ops.aten
METHODS = ("minmax", "mean_minmax", "percentile", "entropy", "mse")
# weighted ops -> index of their activation input (bias correction needs its channel means)
WEIGHTED = {aten.convolution.default: 0, aten.addmm.default: 1, aten.mm.default: 0}


def layer_norm_steps(x: torch.Tensor, shape, w, b, eps: float) -> dict[str, torch.Tensor]:
    """The tensors between the int8 kernels a layer norm of x over its last len(shape) axes
    runs as: mean, centered, norm, and scaled (by the weight, when there is one and a bias
    follows it); the layer norm's own output is not among them."""
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    mean = x.mean(axes, keepdim=True)
    d = x - mean
    steps = {"mean": mean, "centered": d,
             "norm": d * torch.rsqrt((d * d).mean(axes, keepdim=True) + eps)}
    if w is not None and b is not None:
        steps["scaled"] = steps["norm"] * w
    return steps


class Ranges(dict):
    """node name -> (lo, hi); `means`: node name -> per-channel (axis 1) mean of the nodes
    that feed a convolution or a linear ({} when not measured); `huge`: the nodes that held
    values beyond +-1e30 or inf (attention masks), which their range leaves out."""

    def __init__(self, ranges=(), means: dict[str, np.ndarray] | None = None,
                 huge=()) -> None:
        super().__init__(ranges)
        self.means = dict(means or {})
        self.huge = frozenset(huge)


@dataclass(slots=True)
class NodeStats:
    """What one pass records of one node's values."""

    lo: float = np.inf
    hi: float = -np.inf
    sample_lo: list = field(default_factory=list)  # per-input extremes (mean_minmax)
    sample_hi: list = field(default_factory=list)
    hist: object = None
    channel_sum: np.ndarray | None = None
    channel_count: int = 0
    output: bool = False  # a model output: mean_minmax keeps its extremes
    huge: bool = False  # held values beyond +-1e30 or inf (left out of the range)


def collect(ir, batches, histograms: bool = False) -> dict[str, NodeStats]:
    """Run the IR's graph over `batches` (dicts input name -> tensor) recording NodeStats."""
    gm = ir.module()
    feeds_weighted = {n.args[i].name for n in gm.graph.nodes if n.op == "call_function"
                      and (i := WEIGHTED.get(n.target)) is not None
                      and isinstance(n.args[i], torch.fx.Node)}
    out = next(n for n in gm.graph.nodes if n.op == "output")
    outputs = {a.name for a in torch.utils._pytree.tree_leaves(out.args[0])
               if isinstance(a, torch.fx.Node)}
    stats: dict[str, NodeStats] = {}
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    batch_size = 0

    def record(name: str, t: torch.Tensor, channels: bool = False) -> None:
        s = stats.setdefault(name, NodeStats(output=name in outputs))
        _record(s, t.detach().float().numpy(), batch_size, histograms, channels)

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
                record(n.name, out, n.name in feeds_weighted)
            elif n.target is aten.native_layer_norm.default:
                x, shape, w, b, eps = self.fetch_args_kwargs_from_env(n)[0][:5]
                for step, t in layer_norm_steps(x, shape, w, b, float(eps)).items():
                    record(f"{n.name}.{step}", t)
            return out

    with torch.no_grad():
        for batch in batches:
            args = [batch[k] for k in names]
            batch_size = int(args[0].shape[0]) if args and args[0].ndim else 0
            Rec(gm).run(*args)
    return stats


def _record(s: NodeStats, a: np.ndarray, batch_size: int, histograms: bool,
            channels: bool) -> None:
    ok = np.isfinite(a) & (np.abs(a) < 1e30)
    s.huge = s.huge or not ok.all()
    finite = a[ok]
    if not finite.size:
        return
    s.lo, s.hi = min(s.lo, float(finite.min())), max(s.hi, float(finite.max()))
    if batch_size and a.ndim and a.shape[0] == batch_size:  # one extreme per input
        rows = np.where(ok, a, np.nan).reshape(batch_size, -1)
        lo, hi = np.fmin.reduce(rows, axis=1), np.fmax.reduce(rows, axis=1)
        s.sample_lo += lo[np.isfinite(lo)].tolist()
        s.sample_hi += hi[np.isfinite(hi)].tolist()
    else:
        s.sample_lo.append(float(finite.min()))
        s.sample_hi.append(float(finite.max()))
    if histograms:
        if s.hist is None:
            from layerwise.cpp_ext import StreamingHistogram

            s.hist = StreamingHistogram(2048, signed=True)
        s.hist.update(finite)
    if channels and a.ndim >= 2 and ok.all():
        red = tuple(i for i in range(a.ndim) if i != 1)
        s.channel_sum = a.astype(np.float64).sum(red) + (
            0.0 if s.channel_sum is None else s.channel_sum)
        s.channel_count += a.size // a.shape[1]


def ranges_from(stats: dict[str, NodeStats], method: str = "percentile",
                percentile: float = 99.99) -> Ranges:
    """Each node's (lo, hi) by `method` (one of METHODS), with the channel means."""
    if method not in METHODS:
        raise TargetError(f"unknown calibration method {method!r} for tflite; use one of "
                          f"{', '.join(METHODS)}")
    out = {}
    for name, s in stats.items():
        if not np.isfinite(s.lo):
            continue
        if method == "minmax" or (method == "mean_minmax" and s.output):
            out[name] = (s.lo, s.hi)
        elif method == "mean_minmax":
            out[name] = (float(np.mean(s.sample_lo)), float(np.mean(s.sample_hi)))
        elif s.hist is None:
            raise TargetError(f"calibration {method!r} needs histograms: collect(..., "
                              "histograms=True)")
        else:
            from layerwise.cpp_ext import clip_range

            out[name] = clip_range(s.hist, method, percentile)
    means = {name: s.channel_sum / s.channel_count for name, s in stats.items()
             if s.channel_sum is not None and s.channel_count}
    return Ranges(out, means, {name for name, s in stats.items() if s.huge})


def calibrate_ranges(ir, batches, percentile: float | None = None,
                     method: str | None = None) -> Ranges:
    """(min, max) of every floating-point node of the IR's graph over `batches` (dicts of
    input name -> tensor), by `method` (default: percentile when `percentile` is given, else
    minmax); the result's `means` hold the channel means bias correction needs."""
    method = method or ("percentile" if percentile is not None else "minmax")
    stats = collect(ir, batches, histograms=method in ("percentile", "entropy", "mse"))
    return ranges_from(stats, method, 99.99 if percentile is None else percentile)
