"""A causal LM as a TVM generator: the fixed-cache step (compiler/decoder_fixed.py) at
`prefill_len` tokens and at one token, built by Relax for this host's llvm CPU target
(untuned, as the tvm target builds by default) into ONE library, model.so, whose Relax VM
holds two functions, `prefill` and `decode` (runtime/lm_tvm.py runs them).

One library, not two: both functions share one VM, one thread pool and one load, and a
bundle keeps one native file to trust. The weights are stored once, outside the library:
both graphs are imported with their parameters as trailing function inputs (the same
parameters in the same order, checked here), which are written once to weights.npz (equal
arrays, such as a tied embedding table and LM head, once) and bound once at load time;
model.so holds code only. model.json beside it lists each function's inputs, outputs and,
per parameter, the weights.npz array it takes.

TVM's PyTorch frontend turns a one-sided `clamp` into a clip with an infinite bound, which
an integer tensor cannot hold (the step clamps its int32 positions); such a bound is set to
the dtype's own limit before import (`bound_integer_clamps`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from layerwise.base.errors import TargetError
from layerwise.targets.tflite.decoder import LAYOUT, prefill_length, signature_specs

PRECISIONS = ("fp32",)
FILE = "model.so"
SIDECAR = "model.json"
WEIGHTS = "weights.npz"
FUNCTIONS = ("prefill", "decode")


def emit_tvm_decoder(model, out_dir: Path, precision: str, generation: dict,
                     prefill_len: int | None = None) -> dict:
    """Write model.so (functions prefill and decode), weights.npz and model.json into
    out_dir; returns the model entry. Assumes an eval-mode transformers causal LM with eager
    attention and the generation section of lm.generation_config (its max_seq sizes the
    cache)."""
    from layerwise.targets.tvm import _compile, _export_trusted, _tvm, host_target

    tvm = _tvm()
    from tvm import relax

    if precision not in PRECISIONS:
        raise TargetError(f"a text-generation bundle for tvm takes --precision "
                          f"{', '.join(PRECISIONS)}, not {precision!r}")
    max_seq = generation["max_seq"]
    prefill_len = prefill_length(max_seq, prefill_len)
    funcs, inputs, weights = {}, {}, None
    for key, length in zip(FUNCTIONS, (prefill_len, 1)):
        func, names, params = _import(model, max_seq, length, key)
        if weights is None:
            weights = params
        elif list(params) != list(weights):
            raise TargetError(f"the {key} step takes other parameters than prefill "
                              f"({len(params)} vs {len(weights)}); use --target onnx")
        funcs[key], inputs[key] = func.with_attr("global_symbol", key), names
    mod = tvm.IRModule(funcs)
    mod = relax.transform.CanonicalizeBindings()(
        relax.transform.DecomposeOpsForInference()(mod))
    # weights are inputs, so a linear's transpose cannot be folded away: fuse it into the
    # matmul rather than copy every weight matrix at every step
    mod = relax.transform.FuseTransposeMatmul()(mod)
    t0 = time.perf_counter()
    ex = _compile(tvm, mod, tvm.target.Target(host_target(tvm)))
    compile_s = time.perf_counter() - t0
    out_dir = Path(out_dir)
    _export_trusted(ex, out_dir / FILE)
    stored, order = unique_arrays(weights)
    np.savez(out_dir / WEIGHTS, **stored)
    specs = signature_specs(generation, prefill_len)
    (out_dir / SIDECAR).write_text(json.dumps(
        {"functions": {k: {**specs[k], "inputs_order": inputs[k]} for k in FUNCTIONS},
         "params": order, "weights": WEIGHTS}, indent=1))
    return {"file": FILE, "files": [FILE, SIDECAR, WEIGHTS], "format": "tvm-relax-vm",
            "precision": precision, "tvm": tvm.__version__, "target": host_target(tvm),
            "functions": list(FUNCTIONS), "signatures": specs, "prefill_len": prefill_len,
            "cache": "fixed", "cache_layout": LAYOUT, "weights": WEIGHTS,
            "weights_shared": True, "compile_s": compile_s}


def _import(model, max_seq: int, length: int, key: str):
    """(Relax function, its input names, {param name: array}) of the fixed-cache step at
    `length` tokens; the parameters follow the inputs in the function's signature."""
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from layerwise.compiler.decoder_fixed import export_fixed

    try:
        program, _ = export_fixed(model, max_seq, length)
    except TargetError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.export raises assorted types
        raise TargetError(f"exporting the {key} step for tvm failed: {_first(e)}; use "
                          "--target onnx for this model") from e
    bound_integer_clamps(program)
    try:
        mod = from_exported_program(program, keep_params_as_input=True)
    except Exception as e:  # noqa: BLE001 - the frontend raises assorted types
        raise TargetError(f"TVM's PyTorch frontend cannot import the {key} step: "
                          f"{_first(e)}; use --target onnx for this model") from e
    mod, params = relax.frontend.detach_params(mod)
    func = mod["main"]
    count = int(func.attrs["num_input"])
    names = [v.name for v in func.params]
    arrays = {n: p.numpy() for n, p in zip(names[count:], params["main"])}
    return func, names[:count], arrays


def unique_arrays(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """(arrays with equal contents kept once, under the first one's name; for each input
    array in order, the name it is stored under). A tied embedding table and LM head are one
    parameter to torch but two to the exported step."""
    first: dict[tuple, str] = {}
    stored, order = {}, []
    for name, a in arrays.items():
        key = (a.dtype.str, a.shape, hashlib.sha256(np.ascontiguousarray(a).data).digest())
        if key not in first:
            first[key], stored[name] = name, a
        order.append(first[key])
    return stored, order


def bound_integer_clamps(program) -> int:
    """Give every integer `aten.clamp` with a missing bound the dtype's own limit (in place);
    returns how many were changed. The value computed is the same."""
    import torch

    changed = 0
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.aten.clamp.default:
            continue
        val = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
        if val is None or val.dtype.is_floating_point:
            continue
        x, low, high = [*node.args, None, None][:3]
        if low is None or high is None:
            info = torch.iinfo(val.dtype)
            node.args = (x, info.min if low is None else low, info.max if high is None else high)
            changed += 1
    return changed


def _first(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
