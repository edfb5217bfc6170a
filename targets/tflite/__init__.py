"""TFLite (LiteRT) target: our own .tflite flatbuffer emitter from the Core ATen graph.

No TensorFlow: the model is written with the schema object API that ai-edge-litert ships and
run by its Interpreter. The graph is walked node by node through a table of converters (one
small function per ATen op, in `tflite_ops` and `tflite_nn`). Convolutions run NHWC; the file
takes and returns tensors in the same layout, names and dtypes as the ONNX bundle (NCHW images)
and TRANSPOSEs are inserted only where a layout must change.

The batch is the example inputs' batch (2): shape-only nodes (sizes, `arange`, `full`,
masks built from them) are folded to constants on it. Dynamic inputs carry shape signature -1
and reshapes write -1 on the batch axis, so CNNs also run at another batch after
`resize_tensor_input`; models that fold batch-sized constants (ViT's class token, BERT's token
types) do not, and `emit` writes those again as a static model at batch 1 (the example
inputs' first row), the batch an edge device runs; compile verifies it on that row. The
model entry says which (`dynamic_batch`, `batch`).

precision "fp32" (default) or "int8": int8 with float inputs and outputs (QUANTIZE /
DEQUANTIZE at the edges), per-tensor asymmetric activations from calibrated ranges
(`tflite_calibrate`, the recipe's method), per-channel symmetric weights and int32 biases
corrected for the mean error of the rounded weights. With the recipe's `float_outputs` the
layers producing the model's outputs (the logits) compute in float from their dequantized
int8 input and weights, and what int8 cannot hold (layer norm, attention masks; see
`tflite_mixed`) runs as float islands between int8 kernels. Without (a full-integer device,
recipe `full_integer` or `float_outputs` false) everything is int8 and a float island is an
error naming its op and layer.
"""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import torch

from layerwise.base.errors import TargetError
from layerwise.base.recipe import QuantRecipe
from layerwise.compiler.passes.equalize import equalized
from layerwise.targets import TargetInfo
from layerwise.targets.tflite.calibrate import calibrate_ranges

# LiteRT full-integer: int8 asymmetric activations, per-channel int8 weights, bias
# correction, float logits, range equalization on the IR (README: INT8 recipes)
INFO = TargetInfo(name="tflite", runtime="tflite", precisions=("fp32", "int8"),
                  extra="ai-edge-litert",
                  legalize=("unguard_softmax", "decompose_group_norm", "legalize_copies"),
                  recipe=QuantRecipe(calibration="mean_minmax", equalize_depthwise=1.0,
                                     equalize_pointwise=0.5))
FILE = "model.tflite"

aten = torch.ops.aten
# ops whose result depends only on shapes: constants once the batch is fixed
SHAPE_ONLY = {aten.sym_size.int, aten.full_like.default, aten.zeros_like.default,
              aten.ones_like.default, aten.empty_like.default, aten.scalar_tensor.default,
              aten.full.default, aten.arange.start_step, aten.arange.default,
              aten.arange.start, aten.zeros.default, aten.ones.default,
              aten.empty.memory_format, operator.mul, operator.add, operator.sub,
              operator.floordiv, operator.truediv}
SKIP = {aten._assert_tensor_metadata.default, aten._assert_scalar.default,
        aten.sym_constrain_range_for_size.default}


def emit(ir, out_dir: Path, opts=None) -> dict:
    """Write model.tflite into out_dir; returns the model entry."""
    precision = getattr(opts, "precision", "fp32") or "fp32"
    if precision not in INFO.precisions:
        raise TargetError(f"tflite emits {', '.join(INFO.precisions)}, not {precision!r}")
    ranges = _plan_ranges(ir) if precision == "int8" else None
    path = Path(out_dir) / FILE
    stats = emit_tflite(ir, path, precision=precision, ranges=ranges)
    dynamic = _runs_batch_one(ir, path)
    if not dynamic and ir.meta.get("dynamic_inputs") and stats["batch"] > 1:
        # the graph bakes the batch into constants (a class token, token types): fix it at
        # batch 1, as an edge device runs it, rather than at the example batch
        stats = emit_tflite(ir, path, precision=precision, ranges=ranges, batch=1)
    check_loads(path)  # the file as written, whichever batch it has
    return {"file": FILE, "files": [FILE], "format": "tflite", "precision": precision,
            "batch": stats["batch"], "dynamic_batch": dynamic, "ops": stats["ops"],
            **({"equalized_activations": n} if (n := equalized(ir)) else {})}


def check_loads(path: Path, what: str = "model"):
    """LiteRT's Interpreter over the file, tensors allocated; an op or op version LiteRT does
    not register is a TargetError here, at emit time, with LiteRT's own reason."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
    except Exception as e:  # noqa: BLE001 - LiteRT raises ValueError / RuntimeError
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        why = next((ln for ln in lines if "op" in ln.lower()), lines[0] if lines else "")
        raise TargetError(f"LiteRT cannot load the emitted {what}: {why[:300]}; use "
                          "--target onnx for this model, or report the op") from e
    return interp


def _runs_batch_one(ir, path: Path) -> bool:
    """Whether the file also runs at batch 1 (its graph bakes no batch-sized constant)."""
    from layerwise.runtime.litert import LiteRTRunner

    if not ir.meta.get("dynamic_inputs"):
        return False
    try:
        LiteRTRunner(path, threads=1).run({k: v[:1].numpy() for k, v in
                                           ir.example_inputs.items()})
    except Exception:
        return False
    return True


def emit_tflite(ir, path: Path, precision: str = "fp32",
                ranges: dict[str, tuple[float, float]] | None = None, *,
                float_outputs: bool | None = None, bias_correction: bool | None = None,
                full_integer: bool | None = None, batch: int | None = None) -> dict:
    """Lower the IR to `path`; returns {"batch", "ops": {op: count}}.

    int8 only: `float_outputs` (default: the quantize recipe's, else True) computes the
    layers that produce the model's outputs in float from their int8 inputs and weights
    (False: all int8, as full-integer devices need); `bias_correction` (same default) shifts
    each int8 layer's bias by the mean error of its rounded weights (needs `ranges.means`
    from calibrate_ranges); `full_integer` (default: the recipe's, else not float_outputs)
    refuses float islands with an error naming the op and layer. `batch`: emit a static model
    at this batch (the example inputs' first rows; needs a graph with a dynamic batch) instead
    of the example batch."""
    _require_litert()
    from layerwise.targets.tflite.graph import write_model

    if precision == "int8" and not ranges:
        raise TargetError("int8 tflite needs activation ranges: pass calibrate_ranges(ir, "
                          "batches) or use precision fp32")
    recipe = (ir.annotations.get("quantize") or {}).get("recipe", {})
    if float_outputs is None:
        float_outputs = recipe.get("float_outputs", True)
    if full_integer is None:
        full_integer = recipe.get("full_integer", not float_outputs)
    low = Lowering(ir, int8=precision == "int8", ranges=ranges or {},
                   float_outputs=float_outputs, full_integer=full_integer, recipe=recipe,
                   bias_correction=recipe.get("bias_correction", True)
                   if bias_correction is None else bias_correction, batch=batch)
    model = low.run()
    write_model(model, path)
    counts: dict[str, int] = {}
    names = {v: k for k, v in vars(low.b.fb.BuiltinOperator).items() if not k.startswith("_")}
    for o in low.b.operators:
        name = names[low.b.opcode_list[o.opcodeIndex].builtinCode]
        counts[name] = counts.get(name, 0) + 1
    batch = batch or (next(iter(ir.example_inputs.values())).shape[0] if ir.example_inputs
                      else 1)
    return {"batch": int(batch), "ops": counts}


def _calibration_batches(ir) -> list[dict]:
    """ir.calibration as torch tensors (else the example inputs)."""
    return [{k: torch.from_numpy(v) for k, v in b.items()} for b in ir.calibration] or \
        [ir.example_inputs]


def _plan_ranges(ir) -> dict[str, tuple[float, float]]:
    """Ranges per the `quantize` pass's recipe over ir.calibration (else the example inputs)."""
    recipe = (ir.annotations.get("quantize") or {}).get("recipe", {})
    return calibrate_ranges(ir, _calibration_batches(ir),
                            recipe.get("percentile", 99.99),
                            method=recipe.get("calibration", "mean_minmax"))


def _require_litert() -> None:
    try:
        import ai_edge_litert.schema_py_generated  # noqa: F401
    except ImportError as e:
        raise TargetError("the tflite target needs LiteRT: pip install ai-edge-litert") from e


class Lowering:
    """One walk over the graph: records concrete values, folds shape-only nodes, converts."""

    def __init__(self, ir, int8: bool, ranges: dict, *, float_outputs: bool = True,
                 bias_correction: bool = True, full_integer: bool = False,
                 recipe: dict | None = None, batch: int | None = None) -> None:
        from layerwise.targets.tflite.calibrate import Ranges
        from layerwise.targets.tflite.graph import ModelBuilder
        from layerwise.targets.tflite.mixed import hybrid_linears, mask_ranges, plan_float

        self.ir = ir
        self.gm = ir.module()
        self.batch = batch  # a static model at this batch (None: the example inputs')
        self.quantized = int8  # an int8 model
        self.int8 = int8  # the node being converted computes in int8 (not a float island)
        self.ranges = ranges
        # per-channel input means of the weighted layers, for bias correction
        self.means = getattr(ranges, "means", {}) if int8 and bias_correction else {}
        out = next(n for n in self.gm.graph.nodes if n.op == "output")
        self.float_out = {a for a in torch.utils._pytree.tree_leaves(out.args[0])
                          if isinstance(a, torch.fx.Node)} if int8 and float_outputs else set()
        self.b = ModelBuilder(int8=int8)
        self.env: dict = {}
        self.values = self._record()
        self.const = self._constants()
        self._cast: dict = {}  # (tensor index, q) -> the QUANTIZEd / DEQUANTIZEd tensor
        if int8 and full_integer:  # masks in int8, clamped to the bottom of the range
            self.ranges = Ranges(ranges, ranges.means, ranges.huge) if isinstance(
                ranges, Ranges) else dict(ranges)
            self.ranges.update(mask_ranges(self, ranges, getattr(ranges, "huge", ())))
        # float islands: node -> why it computes in float (none on a full-integer device)
        plan = ir.annotations.get("quantize") or {}
        recipe = recipe if recipe is not None else plan.get("recipe", {})
        self.floats = plan_float(
            self, getattr(ranges, "huge", ()),
            weighted_matmuls_only=recipe.get("weighted_matmuls_only", True),
            float_linears_after=tuple(recipe.get("float_linears_after", ("Gelu",))),
            full_integer=full_integer, keep_fp32=plan.get("keep_fp32", ())) if int8 else {}
        # float linears that keep int8 weights (LiteRT's hybrid kernel)
        self.hybrid = hybrid_linears(self.floats)
        if full_integer:
            live = self._live()
            for n, why in self.floats.items():
                if n in live:
                    raise self.fail(n, f"it would compute in float ({why}) and a "
                                    "full-integer device has no float fallback",
                                    "Run it where float fallback is allowed (e.g. --device "
                                    "host), or use --target onnx")

    # ------------------------------------------------------------ analysis

    def _record(self) -> dict:
        vals: dict = {}

        class Rec(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                vals[n] = out
                return out

        names = [n.target for n in self.gm.graph.nodes if n.op == "placeholder"]
        with torch.no_grad():
            Rec(self.gm).run(*[self.ir.example_inputs[k][:self.batch] for k in names])
        return vals

    def _constants(self) -> set:
        const = set()
        for n in self.gm.graph.nodes:
            if n.op == "get_attr" or (n.op == "call_function" and (
                    n.target in SHAPE_ONLY or all(a in const for a in n.all_input_nodes))):
                const.add(n)
        return const

    def _live(self) -> set:
        out = next(n for n in self.gm.graph.nodes if n.op == "output")
        live, todo = set(), [out]
        while todo:
            n = todo.pop()
            if n in live or n in self.const:
                continue
            live.add(n)
            todo.extend(n.all_input_nodes)
        return live

    # ------------------------------------------------------------ helpers for converters

    def is_const(self, arg) -> bool:
        return not isinstance(arg, torch.fx.Node) or arg in self.const

    def concrete(self, arg):
        """The value of an argument on the example inputs: numpy for tensors, lists kept."""
        if isinstance(arg, torch.fx.Node):
            v = self.values[arg]
            if isinstance(v, torch.Tensor):
                return v.detach().numpy()
            return int(v) if isinstance(v, torch.SymInt) else v
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.concrete(a) for a in arg)
        return arg

    def tensor_of(self, node) -> torch.Tensor:
        v = self.values[node]
        if not isinstance(v, torch.Tensor):
            raise self.fail(node, "produces no single tensor")
        return v

    def dtype(self, node) -> np.dtype:
        return np.dtype(str(self.tensor_of(node).dtype).removeprefix("torch."))

    def shape(self, node) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor_of(node).shape)

    def value(self, arg, dtype=None):
        """The emitted tensor of an argument (constants materialised, torch layout); in an
        int8 model, QUANTIZEd for an int8 node and DEQUANTIZEd for a float island."""
        if not self.is_const(arg):
            v = self.raw(arg)
            if not self.quantized or v.dtype.kind != "f":
                return v
            if self.int8 and v.q is None:
                return self._convert(v, self.qparams(arg), f"{arg.name}_int8")
            if not self.int8 and v.q is not None:
                return self._convert(v, None, f"{arg.name}_float")
            return v
        a = np.asarray(self.concrete(arg))
        if dtype is not None:
            a = a.astype(dtype)
        elif a.dtype == np.float64:
            a = a.astype(np.float32)
        return self.const_tensor(a, getattr(arg, "name", "const"))

    def raw(self, arg):
        """The emitted tensor of a node as its producer left it (int8 or float)."""
        v = self.env.get(arg)
        if v is None or isinstance(v, list):
            raise self.fail(arg, "has no single emitted tensor")
        return v

    def _convert(self, v, q, name: str):
        key = (v.index, q)
        if key not in self._cast:
            self._cast[key] = self.b.requantize(v, q, name) if q is not None else \
                self.b.dequantize(v, name)
        return self._cast[key]

    def const_tensor(self, a: np.ndarray, name: str = "const", perm=None):
        q = None
        if self.int8 and a.dtype.kind == "f":
            from layerwise.targets.tflite.graph import qparams_for_range

            q = qparams_for_range(a.min() if a.size else 0, a.max() if a.size else 0)
        return self.b.const(a, name, q=q, perm=perm)

    def qparams(self, node):
        """int8 parameters for a node's float output from its calibrated range (None in fp32)."""
        if not self.int8 or self.dtype(node).kind != "f":
            return None
        from layerwise.targets.tflite.graph import qparams_for_range

        if node.name not in self.ranges:
            raise self.fail(node, "has no calibrated range for int8 (calibrate_ranges "
                            "covers every float node; was the IR changed after calibrating?)")
        return qparams_for_range(*self.ranges[node.name])

    def out(self, node, shape, perm, q="node", dtype=None):
        """A new tensor for node's result; int8 parameters from its range unless given."""
        if q == "node":
            q = self.qparams(node)
        return self.b.tensor(node.name, shape, dtype or self.dtype(node), perm, q)

    def float_output(self, node) -> bool:
        """Whether an int8 layer producing `node` should output float: a model output that
        nothing else reads."""
        return node in self.float_out and all(u.op == "output" for u in node.users)

    def users(self, node) -> list:
        return list(node.users)

    def sole_user(self, node):
        us = list(node.users)
        return us[0] if len(us) == 1 and us[0].op == "call_function" else None

    def fail(self, node, why: str,
             hint: str = "Use --target onnx for this model, or report the op") -> TargetError:
        from layerwise.compiler.layers import layer_of

        layer = layer_of(node) or "(top level)"
        return TargetError(
            f"tflite cannot map {node.target} (node {node.name}, layer {layer}): {why}. {hint}")

    # ------------------------------------------------------------ the walk

    def run(self):
        from layerwise.targets.tflite.graph import identity
        from layerwise.targets.tflite.nn import NN
        from layerwise.targets.tflite.ops import OPS
        from layerwise.targets.tflite.gather import GATHER
        from layerwise.targets.tflite.resize import RESIZE
        from layerwise.targets.tflite.scan import SCAN

        assert not set(OPS) & set(NN), set(OPS) & set(NN)
        converters = {**OPS, **NN, **SCAN, **GATHER, **RESIZE}

        b = self.b
        live = self._live()
        inputs = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        dynamic = set(self.ir.meta.get("dynamic_inputs", [])) if self.batch is None else set()
        b.dynamic_batch = bool(dynamic)
        for n in inputs:
            t = self.tensor_of(n)
            v = b.tensor(n.target, tuple(t.shape), self.dtype(n))
            if n.target in dynamic:
                b.tensors[v.index].shapeSignature = [-1, *t.shape[1:]]
            b.inputs.append(v.index)
            self.env[n] = v  # int8 consumers QUANTIZE it (once)
        for n in self.gm.graph.nodes:
            if n.op != "call_function" or n in self.env or n not in live or n.target in SKIP:
                continue
            conv = converters.get(n.target)
            if conv is None:
                raise self.fail(n, "no TFLite converter for this ATen op")
            self.int8 = self.quantized and n not in self.floats
            res = conv(self, n)
            if n not in self.env:
                self.env[n] = res
        self.int8 = self.quantized
        out_node = next(n for n in self.gm.graph.nodes if n.op == "output")
        leaves = [a for a in torch.utils._pytree.tree_leaves(out_node.args[0])
                  if isinstance(a, torch.fx.Node)]
        names = list(self.ir.output_names)
        for name, n in zip(names, leaves):
            if self.is_const(n):
                raise self.fail(n, "is a model output that does not depend on the inputs")
            v = b.plain(self.raw(n))
            if v.q is not None:
                f = b.tensor(name, v.shape, v.dtype, identity(len(v.shape)), storage=np.float32)
                b.op("DEQUANTIZE", [v], [f])
                v = f
            elif v.index in b.inputs or v.index in b.outputs:
                v = _copy(b, v, name)
            else:
                b.rename(v, name)
            b.outputs.append(v.index)
        spec = self.ir.meta.get("spec", "model")
        return b.finish(f"layerwise {spec}", [n.target for n in inputs], names)


def _copy(b, v, name):
    """A distinct tensor equal to v (an output that is also an input or another output)."""
    out = b.tensor(name, v.shape, v.dtype, v.perm, v.q)
    b.op("RESHAPE", [v, b.int_const(v.shape)], [out], "Reshape", newShape=list(v.shape))
    return out
