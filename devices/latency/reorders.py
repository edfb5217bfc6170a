"""The layout copies onnxruntime's CPU provider adds around its blocked (NCHWc) kernels.

At its layout optimization level onnxruntime runs convolutions in NCHWc, channels in blocks
of the CPU's vector (16 floats with AVX-512, 8 with AVX2; `_conv_layout` says which convs), and
carries that layout through
the ops that have an NCHWc kernel: pools, and, when every input already is NCHWc, Add / Sum
(same shapes), Mul (same shapes), Concat, Relu, Sigmoid, Tanh, Gelu, QuickGelu (x * sigmoid(x))
and BatchNormalization (onnxruntime 1.32, checked op by op: Clip, Exp, HardSwish's
decomposition and a Mul by a constant or a broadcast tensor are not among them). Every
other consumer needs the tensor back in NCHW, through one ReorderOutput per tensor; a conv
fed from outside the layout needs a ReorderInput. A Transpose to or from channels-last next to
the layout becomes the reorder itself (no extra copy). Ops fused into a conv (its bias,
activation, batch norm, a scale) share the conv's layout; a residual add fuses only when
its other tensor is NCHWc as well (else it is an NCHW Add between reorders). Each reorder
reads and writes the tensor once; it and the Transposes it replaces are recorded with kind
"reorder" (their own efficiency: onnxruntime's reorder kernels are not its Transpose). An
NCHWc conv computes whole channel blocks, so its FLOPs count the padded channels.
"""

from __future__ import annotations

from dataclasses import replace

from layerwise.devices.latency.op_record import OpRecord, op_name

# ops with an NCHWc kernel once their inputs are NCHWc
_FOLLOW = frozenset(("relu", "sigmoid", "tanh", "gelu", "_native_batch_norm_legit_no_training",
                     "native_batch_norm", "max_pool2d_with_indices", "max_pool2d",
                     "avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool2d", "cat"))
_BINARY = frozenset(("add", "mul"))


def _padded(channels: int, block: int) -> int:
    return -(-channels // block) * block


def _conv_layout(node, shapes, block: int) -> tuple[bool, bool]:
    """(runs in NCHWc, reads an NCHWc input) for a 2-D convolution: a plain conv pads its
    channels to the block and reads NCHWc, or plain NCHW when it has fewer input channels
    than a block (the stem, a squeeze-excite expansion); a depthwise conv needs its channels
    to divide by the block; other grouped convs stay NCHW. (onnxruntime 1.32 on AVX-512
    runs MobileNetV2's 24-channel convs in NCHWc: no divisibility needed for plain convs.)"""
    w = shapes.shape(node.args[1])
    if len(w) != 4:
        return False, False
    groups = node.args[8] if len(node.args) > 8 else 1
    if groups == 1:
        return True, w[1] >= block
    if w[1] == 1 and groups == w[0] and w[0] % block == 0:
        return True, True
    return False, False


def _layouts(graph, records: dict[str, OpRecord], src, constant: set[str], *, shapes,
             block: int) -> tuple[dict[str, bool], set[str], dict[str, OpRecord]]:
    """(node -> runs in NCHWc, convs that read NCHWc, records changed: padded convs and the
    residual adds that cannot fuse), walking the graph in order."""
    nchwc: dict[str, bool] = {}
    reads_nchwc: set[str] = set()
    changed: dict[str, OpRecord] = {}
    for node in graph.nodes:
        if node.op != "call_function" or node.name not in records:
            continue
        rec = records[node.name]
        acts = [src(a) for a in node.all_input_nodes if src(a).name not in constant]
        if rec.op == "convolution":
            runs, reads = _conv_layout(node, shapes, block)
            nchwc[node.name] = runs
            if reads:
                reads_nchwc.add(node.name)
            if runs:  # the kernel computes the channels padded to whole blocks
                w = shapes.shape(node.args[1])
                pad_out = _padded(w[0], block) / w[0]
                pad_in = _padded(w[1], block) / w[1] if reads and w[1] > 1 else 1.0
                changed[node.name] = replace(rec, flops=rec.flops * pad_out * pad_in,
                                             outputs=rec.outputs * pad_out)
        elif (rec.fused and rec.op == "add" and len(acts) == 2
              and not all(nchwc.get(a.name) for a in acts)):
            # a residual add fuses into the conv (as its Sum input) only when the other
            # tensor is NCHWc too; else it runs as an NCHW Add between two reorders
            changed[node.name] = replace(rec, fused=False)
            nchwc[node.name] = False
        elif rec.fused:
            nchwc[node.name] = any(nchwc.get(a.name, False) for a in acts)
        elif rec.op in _FOLLOW:
            nchwc[node.name] = bool(acts) and all(nchwc.get(a.name, False) for a in acts)
        elif rec.op in _BINARY:  # two NCHWc tensors of one shape (no scalar, no weight)
            operands = [src(a) for a in node.args[:2] if hasattr(a, "name")]
            nchwc[node.name] = (len(operands) == 2
                                and len({shapes.shape(a) for a in operands}) == 1
                                and all(nchwc.get(a.name, False) for a in operands))
    return nchwc, reads_nchwc, changed


def reorder_records(graph, records: dict[str, OpRecord], free_src: dict, constant: set[str], *,
                    shapes, rows: dict[str, str], block: int) -> dict[str, OpRecord]:
    """The ReorderInput / ReorderOutput copies of a graph whose op records are `records`,
    and the records of its NCHWc convs with their FLOPs over the channels padded to whole
    blocks (24 channels compute as 32 with a block of 16), residual adds that cannot fuse
    into their conv as separate ops, and Transposes that become reorders; update `records`
    with all of them."""

    def src(a):
        return free_src.get(a.name, a)

    nchwc, reads_nchwc, out = _layouts(graph, records, src, constant, shapes=shapes, block=block)

    def add(node, direction: str) -> None:
        name = f"{node.name}.reorder_{direction}"
        if name not in out:
            out[name] = OpRecord(name, "reorder", "reorder", 0.0, 2.0 * shapes.nbytes(node),
                                 0.0, rows.get(node.name, ""))

    for node in graph.nodes:
        if node.op == "output":
            for a in node.all_input_nodes:
                if nchwc.get(src(a).name):
                    add(src(a), "out")
            continue
        rec = (out.get(node.name) or records.get(node.name)) if node.op == "call_function" else None
        if rec is None:  # free ops alias their input (src() looks through them)
            continue
        inside = nchwc.get(node.name, False) and rec.op != "convolution"
        for a in map(src, node.all_input_nodes):
            if a.name in constant:
                continue
            if nchwc.get(a.name) and rec.op == "permute":  # ReorderOutput to channels-last
                out[node.name] = replace(rec, kind="reorder")
            elif nchwc.get(a.name) and not inside and node.name not in reads_nchwc:
                add(a, "out")  # an NCHWc tensor read by an NCHW op
            if node.name in reads_nchwc and not nchwc.get(a.name):
                if a.op == "call_function" and op_name(a.target) == "permute":
                    out[a.name] = replace(records[a.name], kind="reorder")  # channels-last in
                else:
                    add(a, "in")
    return out
