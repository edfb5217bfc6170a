"""Per-op timing for LiteRT, whose Python Interpreter has no profiler: every operator of the
model is cut out into a one-op model (same tensors, same buffers, same options) and timed
alone by the same Interpreter on the intermediate values the full model computed for the
profiled inputs. Isolated timings miss the cache effects of running in sequence, so the
figures are per-op costs, not a partition of the end-to-end latency; the sum is reported
beside it. A one-op model that XNNPACK (LiteRT's default CPU delegate) refuses to set up on
its own, as some int8 ops cut out of their chain are, is timed with LiteRT's builtin kernels
instead, and its row counts those calls under `builtin_calls`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def isolated_op_times(model: Path, feeds: dict[str, np.ndarray], threads: int,
                      repeats: int = 20) -> list[dict]:
    """[{op, total_ms, calls, share}] per op type, slowest first (median of `repeats`)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from ai_edge_litert.tools import flatbuffer_utils as fu

    data = Path(model).read_bytes()
    values = _all_tensors(Interpreter, data, feeds, threads)
    m = fu.read_model_from_bytearray(bytearray(data))
    sub = m.subgraphs[0]
    ops, inputs, outputs = list(sub.operators), list(sub.inputs), list(sub.outputs)
    per: dict[str, list[float]] = {}
    try:
        for op in ops:
            dyn = [t for t in op.inputs if t >= 0 and not _is_constant(m, sub.tensors[t])]
            sub.operators, sub.inputs, sub.outputs = [op], dyn, list(op.outputs)
            one = bytes(fu.convert_object_to_bytearray(m))
            builtin = False
            try:
                interp = _ready(Interpreter(model_content=one, num_threads=threads), dyn,
                                values)
            except (RuntimeError, ValueError):
                builtin = True
                interp = _ready(Interpreter(
                    model_content=one, num_threads=threads,
                    experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
                    dyn, values)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                interp.invoke()
                times.append(time.perf_counter() - t0)
            name = fu.opcode_to_name(m, op.opcodeIndex)
            slot = per.setdefault(name, [0.0, 0, 0])
            slot[0] += float(np.median(times)) * 1000.0
            slot[1] += 1
            slot[2] += builtin
    finally:
        sub.operators, sub.inputs, sub.outputs = ops, inputs, outputs
    total = sum(v[0] for v in per.values()) or 1.0
    return sorted(({"op": k, "total_ms": v[0], "calls": v[1], "share": v[0] / total,
                    "timing": "isolated", "builtin_calls": v[2]} for k, v in per.items()),
                  key=lambda d: -d["total_ms"])


def _ready(interp, dyn: list[int], values: dict[int, np.ndarray]):
    """The interpreter with its inputs set, run once (a warm-up; raises if it cannot run)."""
    interp.allocate_tensors()
    for d, t in zip(interp.get_input_details(), dyn):
        interp.set_tensor(d["index"], values[t])
    interp.invoke()
    return interp


def _all_tensors(interpreter_cls, data: bytes, feeds: dict[str, np.ndarray],
                 threads: int) -> dict[int, np.ndarray]:
    """Every tensor's value after one run of the full model on `feeds`."""
    interp = interpreter_cls(model_content=data, num_threads=threads,
                             experimental_preserve_all_tensors=True)
    details = interp.get_input_details()
    for d in details:
        shape = tuple(np.shape(feeds[d["name"]]))
        if shape != tuple(d["shape"]):
            interp.resize_tensor_input(d["index"], list(shape))
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], np.ascontiguousarray(feeds[d["name"]], d["dtype"]))
    interp.invoke()
    out = {}
    for d in interp.get_tensor_details():
        try:
            out[d["index"]] = interp.get_tensor(d["index"]).copy()
        except ValueError:  # tensors with no data (unused scratch)
            continue
    return out


def _is_constant(model, tensor) -> bool:
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return buf is not None and buf.data is not None and len(buf.data) > 0
