"""Op records from an exported program's FX graph: kind, FLOPs and bytes of every node, at a
chosen batch size, with what a runtime fuses or folds marked.

Works on the graph by duck typing (node.op, node.target, node.meta['val'] shapes), so the
devices room needs no torch import. The rules follow what ONNX Runtime's graph optimizer does:
views are free, ops on weights only are constant-folded, an elementwise op (or batch norm)
that consumes the single-use output of a conv or matmul is fused into it.
"""

from __future__ import annotations

import math

from layerwise.devices.latency.op_record import OpRecord, op_name

# op-kind of each Core ATen op (by overload packet name); anything unlisted that is pointwise
# counts as elementwise
KINDS: dict[str, str] = {
    **dict.fromkeys(("mm", "bmm", "addmm", "matmul", "linear", "baddbmm"), "matmul"),
    **dict.fromkeys(("native_layer_norm", "native_group_norm", "native_batch_norm",
                     "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
                     "layer_norm", "rms_norm", "_fused_rms_norm"), "norm"),
    **dict.fromkeys(("_softmax", "_log_softmax", "softmax", "log_softmax"), "softmax"),
    **dict.fromkeys(("max_pool2d_with_indices", "max_pool2d", "avg_pool2d",
                     "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "max_pool1d",
                     "avg_pool1d", "max_pool3d_with_indices", "avg_pool3d"), "pool"),
    **dict.fromkeys(("mean", "sum", "amax", "amin", "any", "all", "var", "var_mean", "prod",
                     "argmax", "argmin", "max", "min", "cumsum", "logsumexp"), "reduce"),
    **dict.fromkeys(("gelu", "erf", "exp", "tanh", "sigmoid", "silu", "log", "sqrt", "rsqrt",
                     "sin", "cos", "pow", "elu", "mish", "softplus", "log1p", "expm1",
                     "hardswish", "hardsigmoid"), "transcendental"),
    **dict.fromkeys(("permute", "cat", "slice", "select", "gather", "index", "embedding",
                     "constant_pad_nd", "index_select", "upsample_nearest2d",
                     "upsample_bilinear2d", "_unsafe_index", "stack", "split_with_sizes",
                     "roll", "flip", "repeat", "scatter", "index_put", "index_add",
                     "pixel_shuffle", "tril", "triu", "narrow", "expand", "expand_as"),
                   "copy"),
}
# ops that move no data in ONNX Runtime (views, metadata, shape arithmetic)
FREE = frozenset((
    "view", "_unsafe_view", "reshape", "squeeze", "unsqueeze", "alias", "clone",
    "detach", "t", "sym_size", "sym_numel", "sym_stride", "_assert_tensor_metadata",
    "_assert_async", "lift_fresh_copy", "contiguous", "getitem", "dropout", "native_dropout",
    "scalar_tensor", "arange", "full", "zeros", "ones", "empty", "full_like", "zeros_like",
    "ones_like", "empty_like", "_to_copy", "to", "type_as", "split", "unbind",
    "_assert_scalar", "flatten", "unflatten", "view_as", "as_strided",
))
# views that survive as ONNX nodes (Reshape, Squeeze, Unsqueeze, Expand): no data moves,
# but each costs a kernel launch; recorded with kind "view" (expand: a copy, as onnxruntime's
# Expand writes its output)
VIEWS = frozenset(("view", "_unsafe_view", "reshape", "squeeze", "unsqueeze", "flatten",
                   "unflatten", "t", "view_as", "as_strided"))
COMPUTE = ("conv", "dwconv", "matmul")
FUSABLE = ("elementwise",)
# activations ONNX Runtime's CPU optimizer folds into a Conv (FusedConv); GELU, SiLU and
# hardswish stay separate kernels after a conv, and every transcendental op after a matmul
CONV_ACTIVATIONS = frozenset(("sigmoid", "tanh", "hardsigmoid"))
# arithmetic per element of the transcendental ops (their polynomial / rational
# approximations), relative to one FLOP per element for the plain elementwise ops, set from
# timing onnxruntime's CPU kernels
ELEMENT_COST = {"gelu": 20.0, "erf": 14.0, "tanh": 8.0, "exp": 6.0, "sigmoid": 5.0,
                "silu": 6.0, "log": 6.0, "sqrt": 2.0, "rsqrt": 2.0, "pow": 8.0, "elu": 6.0,
                "mish": 24.0, "softplus": 12.0, "log1p": 8.0, "expm1": 8.0, "sin": 10.0,
                "cos": 10.0, "hardswish": 3.0, "hardsigmoid": 2.0}
# a normalized row's fixed cost (its mean and variance reduced across vector lanes, the
# reciprocal square root) in FLOPs at the "row" efficiency: onnxruntime's LayerNormalization
# pays it once per row, so narrow rows cost more per element than wide ones
ROW_FLOPS = 500.0
KIND_NAMES = ("conv", "dwconv", "matmul", "elementwise", "transcendental", "norm", "softmax",
              "pool", "reduce", "copy", "reorder")


class _Shapes:
    """Sizes at batch `batch`: symbolic dims have the batch symbol replaced, other symbols
    take their example value."""

    def __init__(self, graph, user_inputs: set[str], batch: int | None) -> None:
        self.subs = {}
        self.batch_fixed: int | None = None
        for node in graph.nodes:
            if node.op != "placeholder" or node.name not in user_inputs:
                continue
            val = node.meta.get("val")
            shape = getattr(val, "shape", ())
            if not shape:
                continue
            d0 = shape[0]
            expr = getattr(getattr(d0, "node", None), "expr", None)
            if expr is not None and getattr(expr, "is_Symbol", False) and batch is not None:
                self.subs[expr] = batch
            elif expr is None:
                self.batch_fixed = int(d0)

    def dim(self, d) -> int:
        if isinstance(d, int):
            return d
        node = getattr(d, "node", None)
        expr = getattr(node, "expr", None)
        if expr is not None and self.subs:
            v = expr.xreplace(self.subs)
            if isinstance(v, int) or getattr(v, "is_number", False):
                return int(v)
        hint = getattr(node, "hint", None)
        if hint is not None:
            return int(hint)
        try:
            return int(d)
        except (TypeError, ValueError):
            return 1

    def shape(self, node) -> tuple[int, ...]:
        val = node.meta.get("val") if hasattr(node, "meta") else None
        shape = getattr(val, "shape", None)
        return () if shape is None else tuple(self.dim(d) for d in shape)

    def nbytes(self, node) -> float:
        val = node.meta.get("val") if hasattr(node, "meta") else None
        if isinstance(val, (tuple, list)):
            return sum(self.nbytes_val(v) for v in val)
        return self.nbytes_val(val)

    def nbytes_val(self, val) -> float:
        shape = getattr(val, "shape", None)
        if shape is None:
            return 0.0
        itemsize = getattr(getattr(val, "dtype", None), "itemsize", 4)
        return float(math.prod(self.dim(d) for d in shape) * itemsize)

    def numel(self, node) -> int:
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            val = val[0] if val else None
        shape = getattr(val, "shape", None)
        return 0 if shape is None else math.prod(self.dim(d) for d in shape)


def _kind(node, name: str, shapes: _Shapes) -> str:
    if name == "convolution":
        w = shapes.shape(node.args[1])
        groups = node.args[8] if len(node.args) > 8 else 1
        return "dwconv" if groups > 1 and len(w) > 1 and w[1] == 1 else "conv"
    if name in KINDS:
        return KINDS[name]
    return "elementwise"


def _flops(node, name: str, kind: str, shapes: _Shapes) -> float:
    out = shapes.numel(node)
    if name == "convolution":
        w = shapes.shape(node.args[1])
        return 2.0 * out * math.prod(w[1:]) if len(w) > 1 else 0.0
    if kind == "matmul":
        a = node.args[1] if name in ("addmm", "baddbmm") else node.args[0]
        k = shapes.shape(a)[-1] if shapes.shape(a) else 0
        return 2.0 * out * k
    if kind in ("pool", "reduce"):  # one op per input element read
        return float(sum(shapes.numel(a) for a in node.all_input_nodes[:1]))
    if kind == "norm":
        return 5.0 * out
    if kind == "softmax":
        return 5.0 * out
    if kind == "copy":
        return 0.0
    return float(out) * ELEMENT_COST.get(name, 1.0)


def _rows(node, name: str, kind: str, shapes: _Shapes) -> float:
    """Rows a layer / RMS norm normalizes (numel over the normalized shape); 0 for others."""
    if kind != "norm" or not ("layer_norm" in name or "rms_norm" in name):
        return 0.0
    dims = node.args[1] if len(node.args) > 1 else ()
    if not isinstance(dims, (list, tuple)) or not dims:
        return 0.0
    return shapes.numel(node) / max(1, math.prod(shapes.dim(d) for d in dims))


def _layer_rows(layers) -> dict[str, str]:
    """node name -> breakdown row: the block holding it, else its shallowest layer (depth 1
    unless the parent is a container that is never called, like a ModuleList)."""
    rows: dict[str, str] = {}
    ordered = sorted(layers or (), key=lambda layer: (not layer.block, layer.depth))
    for layer in ordered:
        for n in layer.nodes:
            rows.setdefault(n, layer.path)
    return rows


def op_records(program, layers=None, batch: int | None = 1,
               nchwc_block: int = 0) -> tuple[list[OpRecord], dict]:
    """Records for every call_function node of `program` (a torch.export ExportedProgram) at
    `batch` (None: the example batch). Returns (records, info) where info says whether the
    batch could be set (`batch_fixed` is the exported batch when it is static).
    `nchwc_block` > 0 adds the layout reorders onnxruntime's CPU provider inserts around its
    blocked convolutions (`reorders.py`; 0: none, for runtimes without them)."""
    graph = program.graph_module.graph
    sig = program.graph_signature
    user_inputs = set(sig.user_inputs)
    shapes = _Shapes(graph, user_inputs, batch)
    rows = _layer_rows(layers)
    constant: set[str] = set()  # weights and what is computed from weights only
    free_src: dict[str, object] = {}  # free node -> the node whose data it aliases
    records: dict[str, OpRecord] = {}
    producer_kind: dict[str, str] = {}  # node -> kind of the op that really produced it
    for node in graph.nodes:
        if node.op == "placeholder":
            if node.name not in user_inputs:
                constant.add(node.name)
            continue
        if node.op != "call_function":
            continue
        name = op_name(node.target)
        inputs = [a for a in node.all_input_nodes]
        if (inputs and all(a.name in constant for a in inputs)) or (not inputs and name in FREE):
            constant.add(node.name)
            continue
        if name in FREE:
            src = next((a for a in inputs if hasattr(a, "meta")), None)
            if src is not None:
                free_src[node.name] = free_src.get(src.name, src)
            if name in VIEWS:
                records[node.name] = OpRecord(node.name, name, "view", 0.0, 0.0, 0.0,
                                              rows.get(node.name, ""))
            continue
        kind = _kind(node, name, shapes)
        real_inputs = [free_src.get(a.name, a) for a in inputs]
        if kind == "copy":  # gathers and copies read about what they write
            w_bytes, nbytes = 0.0, 2.0 * shapes.nbytes(node)
        else:
            w_bytes = sum(shapes.nbytes(a) for a in real_inputs if a.name in constant)
            a_bytes = sum(shapes.nbytes(a) for a in real_inputs if a.name not in constant)
            nbytes = w_bytes + a_bytes + shapes.nbytes(node)
        into = _fused_into(name, kind, real_inputs, producer_kind, free_src,
                           is_constant=lambda a: a.name in constant, shapes=shapes)
        flops = _flops(node, name, kind, shapes)
        if into is not None and "batch_norm" in name:
            flops = 0.0  # folded into the conv's weights when the session is built
        records[node.name] = OpRecord(node.name, name, kind, flops, nbytes, w_bytes,
                                      rows.get(node.name, ""), fused=into is not None,
                                      outputs=float(shapes.numel(node)) if kind in COMPUTE
                                      else 0.0, rows=_rows(node, name, kind, shapes))
        producer_kind[node.name] = kind if into is None else producer_kind[into.name]
    if nchwc_block > 0:
        from layerwise.devices.latency.reorders import reorder_records

        records.update(reorder_records(graph, records, free_src, constant, shapes=shapes, rows=rows,
                                       block=nchwc_block))
    info = {"batch": batch if shapes.subs else shapes.batch_fixed,
            "batch_fixed": shapes.batch_fixed if not shapes.subs else None}
    return list(records.values()), info


def _users(node, free_src) -> int:
    """Number of non-free uses of a node's data (through views)."""
    count = 0
    for u in node.users:
        if u.op == "call_function" and op_name(u.target) in FREE:
            count += _users(u, free_src)
        else:
            count += 1
    return count


def _fused_into(name, kind, real_inputs, producer_kind, free_src, *, is_constant, shapes):
    """The input whose producer an op runs inside, or None: elementwise ops and batch norm
    that read the single-use output of a conv / matmul (or of an op already fused into one),
    the activations a conv fuses (CONV_ACTIVATIONS), and the mul of x * sigmoid(x) (SiLU).
    Of the ops with a second activation input only a same-shape add (a residual) fuses,
    and only into a conv (NCHWc Sum); after a Gemm it runs as its own Add, and a
    squeeze-excite scale x * s as its own Mul."""
    if name == "mul" and len(real_inputs) == 2:
        for gate, x in (real_inputs, real_inputs[::-1]):
            if (gate.op == "call_function" and op_name(gate.target) == "sigmoid"
                    and free_src.get(gate.args[0].name, gate.args[0]) is x
                    and _users(gate, free_src) == 1):
                return gate  # x * sigmoid(x): onnxruntime's QuickGelu, one kernel
    conv_only = name in CONV_ACTIVATIONS
    if kind not in FUSABLE and "batch_norm" not in name and not conv_only:
        return None
    into = ("conv", "dwconv") if conv_only else COMPUTE
    for a in real_inputs:
        if producer_kind.get(a.name) in into and _users(a, free_src) == 1:
            others = [b for b in real_inputs if b is not a and not is_constant(b)]
            if others and (name != "add" or producer_kind[a.name] == "matmul"
                           or any(shapes.numel(b) != shapes.numel(a) for b in others)):
                continue
            return a
    return None
