"""Which nodes of an int8 TFLite graph compute in float (float islands), and why.

LiteRT's int8 kernels cover the weighted layers, matmuls of two activations, GELU, softmax and
the elementwise and layout ops. What they cannot hold, or hold badly, stays float, as TFLite's
own converter does when float fallback is allowed: the int8 input is DEQUANTIZEd, the op runs
in float32 and the first int8 consumer QUANTIZEs the result with its calibrated range (a
layout op between the two is moved to the int8 side, so one QUANTIZE serves Q, K and V).
Float, by rule:

- layer norm (in int8 its variance and reciprocal square root round each row's scale), and a
  batch norm that no convolution absorbs;
- ops LiteRT has no int8 kernel for (POW, SIN, COS, FLOOR, CEIL, SIGN);
- values int8 cannot hold: attention masks of -inf or finfo.min, and every op they reach up
  to the softmax (found from the graph's constants and from calibration);
- casts into float (masks built from integers), and comparisons of float tensors (exact in
  float; an int8 comparison against a constant outside the tensor's range is not);
- the layers the plan keeps in fp32 (`--keep-fp32`), with float weights;
- an elementwise or layout op whose float inputs are all float (no QUANTIZE round trip), and
  a residual add that feeds a layer norm (the residual stream stays float, as in the ONNX
  target's transformer recipe).

By the quantize recipe: a matmul of two activations (attention) is float while
`weighted_matmuls_only` (LiteRT's int8 BATCH_MATMUL runs outside XNNPACK, so it is slower
than the float matmul and agrees less with fp32), and a linear reading a
`float_linears_after` op (GELU's outputs are long-tailed, too wide for one per-tensor int8
scale) runs LiteRT's hybrid kernel: int8 weights, its float input quantized per row as it
runs.

Weighted layers otherwise read int8 (a float input is QUANTIZEd); GELU and softmax follow
their input. A full-integer device has no float fallback: everything above that int8 can run
is int8 (attention matmuls, GELU-fed linears, layer norms as LiteRT's int8 MEAN, SUB,
L2_NORMALIZATION, MUL and ADD, additive masks clamped into the scores' range) and the first
node that must be float is an error naming its op and layer (bench/targets.py measures the
result; README: INT8 recipes).
"""

from __future__ import annotations

import numpy as np
import torch

from layerwise.compiler.layers import layer_of

aten = torch.ops.aten
NORMS = {aten.native_layer_norm.default}
# LiteRT 2.x has no int8 kernel for these (probed with the Interpreter)
NO_INT8 = {aten.pow.Tensor_Tensor, aten.sin.default, aten.cos.default, aten.floor.default,
           aten.ceil.default, aten.sign.default}
# read int8 whatever their input: QUANTIZE a float input
INT8_READERS = {aten.addmm.default, aten.mm.default, aten.bmm.default,
                aten.convolution.default}
MATMULS = {aten.addmm.default: 2, aten.mm.default: 1, aten.bmm.default: 1}  # -> weight arg
LAYOUT = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
          aten.permute.default, aten.t.default, aten.clone.default, aten.expand.default,
          aten.contiguous.default, aten.alias.default}
# the quantize recipe's `float_linears_after` (ONNX op names) as ATen ops
ONNX_OPS = {"Gelu": aten.gelu.default, "Softmax": aten._softmax.default,
            "Sigmoid": aten.sigmoid.default, "Tanh": aten.tanh.default}
# float outputs from a constant table: an int8 table
TABLES = {aten.embedding.default, aten.index.Tensor}
# full integer: a select between constants by a boolean is an int8 SELECT_V2, and a cast of
# small integers (a 0/1 mask for mean pooling) an int8 CAST with scale 1
INT_TO_INT8 = {aten.where.self, aten._to_copy.default}
RESIDUAL = {aten.add.Tensor, aten.sub.Tensor}
SOFTMAX = {aten._softmax.default, aten._log_softmax.default}
FOLLOW = "its float inputs are float"
KEEP = "the plan keeps its layer in fp32"
HYBRID = ("reads a {} output (long-tailed: per-tensor int8 loses accuracy), so LiteRT's "
          "hybrid kernel: int8 weights, the input quantized per row as it runs")
HUGE = 1e30  # calibration ignores values beyond this (finfo.min masks)
MASK_MARGIN = 10.0  # full integer: masked scores sit this far below the real ones' minimum


def _is_float(val) -> bool:
    """A float tensor, or a multi-output op whose first output is one (layer norm)."""
    if isinstance(val, (list, tuple)) and val:
        val = val[0]
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _huge(val) -> bool:
    if isinstance(val, torch.Tensor) and val.is_floating_point() and val.numel():
        return bool((~torch.isfinite(val)).any() or (val.abs() >= HUGE).any())
    return isinstance(val, float) and (not np.isfinite(val) or abs(val) >= HUGE)


def plan_float(cx, huge_names=frozenset(), *, weighted_matmuls_only: bool = True,
               float_linears_after=("Gelu",), full_integer: bool = False,
               keep_fp32=()) -> dict:
    """{node: why it computes in float} for the int8 lowering `cx` (a tflite.Lowering), in
    graph order; `huge_names`: nodes whose calibrated values reached +-1e30 or inf; the
    recipe's `weighted_matmuls_only` (matmuls of two activations in float) and
    `float_linears_after` (linears reading these ops run LiteRT's hybrid kernel, the op
    itself in float); `keep_fp32`: layer paths computed in float with float weights.
    `full_integer`: only what int8 cannot run at all, and the kept layers (the first entry
    is then the op to report)."""

    if full_integer:
        weighted_matmuls_only, float_linears_after = False, ()
    floats: dict = {}
    # a full-integer model holds masks in int8, clamped (mask_ranges)
    huge = huge_nodes(cx, huge_names) if not full_integer else set()
    after = {ONNX_OPS[o] for o in float_linears_after if o in ONNX_OPS}
    hybrid = {n for n in cx.gm.graph.nodes if _weighted(cx, n) and _source(n).target in after}
    producers = {_source(n) for n in hybrid}
    for n in cx.gm.graph.nodes:
        if n.op != "call_function" or n in cx.const:
            continue
        ins = [a for a in n.all_input_nodes if a not in cx.const]
        f_ins = [a for a in ins if _is_float(cx.values.get(a))]
        why = _why(cx, n, (ins, f_ins), floats, huge, mixed=not full_integer)
        layer = layer_of(n)
        if any(layer == p or layer.startswith(p + ".") for p in keep_fp32):
            why = KEEP
        elif n in hybrid:
            why = HYBRID.format(_source(n).target.__name__.split(".")[0])
        elif n in producers and all(_sink(u) in hybrid for u in n.users):
            why = "its output feeds hybrid linears only"
        elif weighted_matmuls_only and n.target in MATMULS and not _weighted(cx, n):
            why = "a matmul of two activations (the recipe's weighted_matmuls_only)"
        if why:
            floats[n] = why
    # a layout op between a float producer and int8 readers only: int8, so the producer is
    # QUANTIZEd once (not once per reshaped view, as Q, K and V read one layer norm)
    for n in reversed(cx.gm.graph.nodes):
        if floats.get(n) == FOLLOW and n.target in LAYOUT and n.users and \
                all(u.op == "call_function" and u not in floats for u in n.users):
            del floats[n]
    return floats


def _float_inputs(cx, n) -> list:
    return [a for a in n.all_input_nodes if a not in cx.const and _is_float(cx.values.get(a))]


def _huge_consts(cx, n) -> list:
    consts = [cx.values.get(a) for a in n.all_input_nodes if a in cx.const] + \
        [a for a in n.args if isinstance(a, float)]
    return [c for c in consts if _huge(c)]


def huge_nodes(cx, huge_names=frozenset()) -> set:
    """The float nodes (softmax aside) that hold +-1e30 or inf: on the example inputs, in
    calibration (`huge_names`), from a constant, or from an input that does."""
    huge: set = set()
    for n in cx.gm.graph.nodes:
        if n.op != "call_function" or n in cx.const or not _is_float(cx.values.get(n)) \
                or n.target in SOFTMAX:
            continue
        if n.name in huge_names or _huge(cx.values.get(n)) or _huge_consts(cx, n) or \
                any(a in huge for a in _float_inputs(cx, n)):
            huge.add(n)
    return huge


def mask_ranges(cx, ranges, huge_names=frozenset()) -> dict[str, tuple[float, float]]:
    """Full-integer int8 ranges for additive masks (finfo.min or -inf, which int8 cannot
    hold), by node name. A mask node (its float inputs all masks, or none) gets [-M, hi]; a
    node where a mask meets finite values (the masked scores, and what follows them up to
    the softmax) gets its calibrated range (which leaves the huge values out) widened
    MASK_MARGIN below its minimum. M is twice the widest masked-scores range, so a masked
    position saturates at its sum's minimum and the softmax weighs it at most e^-10 of the
    smallest real score (int8 softmax rounds that to 0). A positive huge value (a +inf
    mask) is an error: clamping it to the top of a range would change results."""
    huge = huge_nodes(cx, huge_names)
    masks: set = set()
    scores: dict = {}
    for n in cx.gm.graph.nodes:
        if n not in huge:
            continue
        for c in _huge_consts(cx, n):
            if np.nanmax(np.asarray(c, np.float64)) > 0:
                raise cx.fail(n, "a full-integer mask holds +inf or a huge positive value, "
                              "which int8 cannot hold", "Use a mask of finfo.min or -inf, or "
                              "run it where float fallback is allowed (--device host)")
        if all(a in masks for a in _float_inputs(cx, n)):
            masks.add(n)
            continue
        lo, hi = ranges.get(n.name, (0.0, 0.0))
        scores[n.name] = (lo - MASK_MARGIN, hi)
    m = 2 * max((hi - lo for lo, hi in scores.values()), default=MASK_MARGIN)
    out = {n.name: (-m, max(ranges.get(n.name, (0.0, 0.0))[1], 0.0)) for n in masks}
    return {**out, **scores}


def hybrid_linears(floats: dict) -> set[str]:
    """Names of the float linears that keep int8 weights (LiteRT's hybrid kernel)."""
    prefix = HYBRID[:HYBRID.index("{")]
    return {n.name for n, why in floats.items() if why.startswith(prefix)}


def _weighted(cx, n) -> bool:
    """A matmul with a constant weight (a linear)."""
    i = MATMULS.get(n.target)
    return i is not None and len(n.args) > i and cx.is_const(n.args[i]) and \
        not cx.is_const(n.args[i - 1])


def _source(n):
    """The op behind a linear's input, through layout ops."""
    x = n.args[MATMULS[n.target] - 1]
    while isinstance(x, torch.fx.Node) and x.target in LAYOUT:
        x = x.args[0]
    return x


def _sink(n):
    """The first user of n that is not a layout op (n itself if it is none)."""
    while n.target in LAYOUT and len(n.users) == 1:
        n = next(iter(n.users))
    return n


def _why(cx, n, inputs, floats, huge, *, mixed: bool) -> str | None:
    """Why n computes in float (None: int8); `inputs`: its non-constant inputs, and those of
    them holding floats; `mixed`: float fallback allowed (layer norms and the residual stream
    that feeds them stay float; without it a layer norm runs LiteRT's int8 kernels)."""
    t, val = n.target, cx.values.get(n)
    ins, f_ins = inputs
    tensor = isinstance(val, torch.Tensor) or (isinstance(val, (list, tuple)) and val
                                               and isinstance(val[0], torch.Tensor))
    if not tensor:
        return None
    if n in huge:
        return "it carries values int8 cannot hold (an attention mask of -inf or finfo.min)"
    if t in INT8_READERS or t is aten.argmax.default:
        return None
    if t in NORMS and mixed:
        return ("layer norm (float where fallback is allowed: int8 rounds each row's variance "
                "and scale)")
    if t is aten._native_batch_norm_legit_no_training.default and \
            getattr(n.args[0], "target", None) is not aten.convolution.default:
        return "a batch norm that no convolution absorbs"
    if t in NO_INT8 or (t is aten.pow.Tensor_Scalar and float(n.args[1]) not in
                        (1.0, 2.0, 0.5, -0.5)):
        return "LiteRT has no int8 kernel for it"
    if t in TABLES and cx.is_const(n.args[0]):
        return None
    if _is_float(val) and ins and not f_ins and (mixed or t not in INT_TO_INT8):
        return "a cast into float (an integer or boolean input)"
    if f_ins and not _is_float(val):
        return "a comparison of float values (exact in float)"
    if f_ins and all(a in floats for a in f_ins):
        return FOLLOW
    if mixed and t in RESIDUAL and f_ins and any(u.target in NORMS for u in n.users):
        return "a residual add feeding a layer norm (the residual stream stays float)"
    return None
