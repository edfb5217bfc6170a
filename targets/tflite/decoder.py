"""A causal LM as one LiteRT generator file: two static signatures over a fixed-size KV cache
(compiler/decoder_fixed.py), `prefill` at `prefill_len` tokens and `decode` at one, as
LiteRT's LLM runtime expects them, in ONE model.tflite whose weights are stored once.

Each signature's graph is lowered by the tflite emitter (`Lowering`) on its own; the second
subgraph is then appended to the first: identical buffers (the weights both graphs hold) are
kept once and shared, operator codes are merged, and each subgraph gets its SignatureDef
(inputs `tokens`, `input_pos`, `kv_cache_{k,v}_{i}`; outputs `logits` and the caches under
the same names). int8-weight gives the linears int8 weights for LiteRT's hybrid kernel
(`int8_weights`). The file is loaded in LiteRT before it is returned: an op LiteRT does not
register is a TargetError here, not at run time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from layerwise.base.errors import TargetError

PRECISIONS = ("fp32", "int8-weight")
FILE = "model.tflite"
FLATBUFFER_LIMIT = 2**31 - 2**26  # a flatbuffer addresses 2 GiB; room for the graph
SIGNATURES = ("prefill", "decode")
LAYOUT = ["batch", "kv_heads", "max_seq", "head_dim"]  # transformers' own cache layout


def prefill_length(max_seq: int, asked: int | None = None) -> int:
    """Tokens per prefill call: `asked`, else 128 or the whole cache when it is shorter;
    refuses a length the fixed cache cannot take."""
    length = asked or min(max_seq, 128)
    if not 1 < length <= max_seq:
        raise TargetError(f"the prefill length {length} must be above 1 and at most "
                          f"--max-seq {max_seq}")
    return length


def emit_tflite_decoder(model, out_dir: Path, precision: str, generation: dict,
                        prefill_len: int | None = None) -> dict:
    """Write model.tflite (signatures prefill and decode) into out_dir; returns the model
    entry. Assumes an eval-mode transformers causal LM with eager attention and the
    generation section of lm.generation_config (its max_seq sizes the cache)."""
    from layerwise.targets.tflite import _require_litert
    from layerwise.targets.tflite.graph import write_model

    _require_litert()
    if precision not in PRECISIONS:
        raise TargetError(f"a text-generation bundle for tflite takes --precision "
                          f"{', '.join(PRECISIONS)}, not {precision!r}")
    max_seq = generation["max_seq"]
    prefill_len = prefill_length(max_seq, prefill_len)
    lowered = [_lower(model, max_seq, length, key)
               for key, length in zip(SIGNATURES, (prefill_len, 1))]
    merged = merge_signatures([m for m, _ in lowered], SIGNATURES)
    quant = int8_weights(merged) if precision == "int8-weight" else None
    size = sum(0 if b.data is None else len(b.data) for b in merged.buffers)
    if size > FLATBUFFER_LIMIT:
        raise TargetError(f"the weights take {size / 2**30:.1f} GiB and a .tflite file holds "
                          "under 2 GiB; use --precision int8-weight or --target onnx")
    path = Path(out_dir) / FILE
    write_model(merged, path)
    check_loads(path)
    ops: dict[str, int] = {}
    for _, counts in lowered:
        for op, n in counts.items():
            ops[op] = ops.get(op, 0) + n
    return {"file": FILE, "files": [FILE], "format": "tflite", "precision": precision,
            "signatures": signature_specs(generation, prefill_len),
            "prefill_len": prefill_len, "cache": "fixed", "cache_layout": LAYOUT,
            "ops": ops, "quantization": quant}


def _lower(model, max_seq: int, length: int, key: str):
    """(ModelT, op counts) of the fixed-cache step at `length` tokens."""
    import torch

    from layerwise.compiler.decoder_fixed import export_fixed, io_names
    from layerwise.compiler.ir import IR
    from layerwise.targets.tflite import Lowering

    try:
        program, inputs = export_fixed(model, max_seq, length)
    except TargetError:
        raise
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TargetError(f"exporting the {key} step for tflite failed: {msg}; use "
                          "--target onnx for this model") from e
    names = io_names(model.config.num_hidden_layers)[1]
    ir = IR(program, [], inputs, [], names,
            {"spec": f"{type(model).__name__} {key}", "dynamic_inputs": []})
    with torch.no_grad():
        low = Lowering(ir, int8=False, ranges={})
        flat = low.run()
    codes = {v: k for k, v in vars(low.b.fb.BuiltinOperator).items() if not k.startswith("_")}
    counts: dict[str, int] = {}
    for o in low.b.operators:
        name = codes[low.b.opcode_list[o.opcodeIndex].builtinCode]
        counts[name] = counts.get(name, 0) + 1
    return flat, counts


def merge_signatures(models: list, keys: tuple[str, ...]):
    """One ModelT holding each single-subgraph model's subgraph under its signature key;
    buffers with the same bytes are stored once, operator codes merged. Assumes each model
    was written by graph.ModelBuilder (one subgraph, one signature, buffer 0 empty)."""
    from ai_edge_litert import schema_py_generated as fb

    out = fb.ModelT()
    out.version = 3
    out.description = "layerwise generator: " + ", ".join(keys)
    out.buffers, out.operatorCodes, out.subgraphs, out.signatureDefs = [fb.BufferT()], [], [], []
    by_bytes: dict[tuple[int, bytes], int] = {}
    by_code: dict[tuple[int, int, int], int] = {}
    for index, (m, key) in enumerate(zip(models, keys)):
        if len(m.subgraphs) != 1 or len(m.signatureDefs) != 1:
            raise TargetError(f"merging signatures takes one-subgraph models; {key} has "
                              f"{len(m.subgraphs)}")
        buffers = {0: 0}
        for i, buf in enumerate(m.buffers):
            data = None if buf.data is None else np.asarray(buf.data, np.uint8)
            if i == 0 or data is None or not data.size:
                buffers[i] = 0 if i == 0 else _append(out, fb.BufferT())
                continue
            digest = (data.size, hashlib.sha256(data.tobytes()).digest())
            if digest not in by_bytes:
                by_bytes[digest] = _append(out, buf)
            buffers[i] = by_bytes[digest]
        codes = {}
        for i, oc in enumerate(m.operatorCodes):
            k = (oc.builtinCode, oc.deprecatedBuiltinCode, oc.version)
            if k not in by_code:
                by_code[k] = len(out.operatorCodes)
                out.operatorCodes.append(oc)
            codes[i] = by_code[k]
        sg = m.subgraphs[0]
        sg.name = key
        for t in sg.tensors:
            t.buffer = buffers[t.buffer]
        for o in sg.operators:
            o.opcodeIndex = codes[o.opcodeIndex]
        out.subgraphs.append(sg)
        sig = m.signatureDefs[0]
        sig.signatureKey, sig.subgraphIndex = key, index
        out.signatureDefs.append(sig)
    return out


def _append(model, buf) -> int:
    model.buffers.append(buf)
    return len(model.buffers) - 1


def int8_weights(model) -> dict:
    """Give every FULLY_CONNECTED a per-row symmetric int8 copy of its float weight matrix
    (in place): LiteRT's hybrid kernel quantizes the float input per row as it runs
    (asymmetric) and accumulates in int32. A buffer both signatures share is quantized once;
    one that another op also reads (a tied embedding table, read by GATHER) keeps its float
    copy for that op and the linear gets its own int8 one."""
    from ai_edge_litert import schema_py_generated as fb

    from layerwise.targets.tflite.graph import symmetric_per_channel

    fc = next((i for i, oc in enumerate(model.operatorCodes)
               if oc.builtinCode == fb.BuiltinOperator.FULLY_CONNECTED), None)
    other = {sg.tensors[t].buffer for sg in model.subgraphs for o in sg.operators
             for slot, t in enumerate(o.inputs)
             if t >= 0 and not (o.opcodeIndex == fc and slot == 1)}  # read not as FC weights
    done: dict[int, tuple[int, object]] = {}  # float buffer -> (int8 buffer, QParams)
    count = 0
    for sg in model.subgraphs:
        for o in sg.operators:
            t = sg.tensors[o.inputs[1]] if o.opcodeIndex == fc else None
            if t is None or t.type != fb.TensorType.FLOAT32 or len(t.shape) != 2 \
                    or not t.buffer:
                continue
            if t.buffer not in done:
                w = np.frombuffer(np.asarray(model.buffers[t.buffer].data, np.uint8).tobytes(),
                                  np.float32).reshape(t.shape)
                q, qp = symmetric_per_channel(w, 0)
                buf = fb.BufferT()
                buf.data = np.frombuffer(q.tobytes(), np.uint8)
                if t.buffer in other:  # still read as float elsewhere
                    done[t.buffer] = (_append(model, buf), qp)
                else:
                    model.buffers[t.buffer] = buf
                    done[t.buffer] = (t.buffer, qp)
            t.buffer, qp = done[t.buffer]
            t.type = fb.TensorType.INT8
            t.quantization = fb.QuantizationParametersT()
            t.quantization.scale = [float(x) for x in qp.scale]
            t.quantization.zeroPoint = [0] * len(qp.scale)
            t.quantization.quantizedDimension = 0
            o.builtinOptions.asymmetricQuantizeInputs = True
            count += 1
    return {"weights": "int8 symmetric per output channel", "kernel": "LiteRT hybrid "
            "FULLY_CONNECTED (inputs quantized per row at run time)", "linears": count,
            "matrices": len(done)}


def check_loads(path: Path) -> None:
    """Refuse a file LiteRT cannot load (an op or op version it does not register), with
    LiteRT's own reason."""
    from layerwise.targets.tflite import check_loads as loads

    found = set(loads(path, "generator").get_signature_list())
    if found != set(SIGNATURES):
        raise TargetError(f"the emitted generator has signatures {sorted(found)}, not "
                          f"{list(SIGNATURES)}")


def signature_specs(generation: dict, prefill_len: int) -> dict:
    """Each signature's inputs and outputs as the manifest lists tensors."""
    from layerwise.compiler.decoder_fixed import io_names

    g = generation
    cache = ([1, g["kv_heads"], g["max_seq"], g["head_dim"]], "float32")
    ins, outs = io_names(g["layers"])
    specs = {}
    for key, length in zip(SIGNATURES, (prefill_len, 1)):
        shapes = {"tokens": ([1, length], "int32"), "input_pos": ([length], "int32"),
                  "logits": ([1, length, g["vocab_size"]], "float32")}
        specs[key] = {io: [{"name": n, "shape": shapes.get(n, cache)[0],
                            "dtype": shapes.get(n, cache)[1]} for n in names]
                      for io, names in (("inputs", ins), ("outputs", outs))}
    return specs


def prefill_example(generation: dict, prompt: list[int]) -> dict[str, np.ndarray]:
    """The prefill signature's inputs for `prompt` from an empty cache (the bundle's
    example inputs): the prompt's first tokens, padded, pads at the position max_seq."""
    from layerwise.compiler.decoder_fixed import cache_names

    g = generation
    length, max_seq = g["prefill_len"], g["max_seq"]
    used = min(len(prompt), length)
    tokens = np.zeros((1, length), np.int32)
    tokens[0, :used] = prompt[:used]
    pos = np.full(length, max_seq, np.int32)
    pos[:used] = np.arange(used)
    cache = np.zeros((1, g["kv_heads"], max_seq, g["head_dim"]), np.float32)
    return {"tokens": tokens, "input_pos": pos, **{n: cache for n in cache_names(g["layers"])}}
