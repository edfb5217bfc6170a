"""The .tflite model being built: tensors, buffers, operators, layouts and int8 parameters.

Each emitted tensor is a `Value`; its `perm` says how its data sits relative to the torch
tensor it stands for (`tflite_data == torch_data.permute(perm)`), so convolutions run NHWC
while the graph keeps torch's axis numbers. `relayout` inserts the TRANSPOSE (or a RESHAPE
when only size-1 axes move) that a consumer needing another layout asks for.
Written with the schema object API that ai-edge-litert ships; no TensorFlow involved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layerwise.base.errors import TargetError

# builtins LiteRT registers from a version above 1 (BROADCAST_TO's version 1 was a custom op)
MIN_VERSION = {"BROADCAST_TO": 2}
TYPES = {np.dtype("float32"): 0, np.dtype("int32"): 2, np.dtype("uint8"): 3,
         np.dtype("int64"): 4, np.dtype("bool"): 6, np.dtype("int16"): 7, np.dtype("int8"): 9}


@dataclass(frozen=True, slots=True)
class QParams:
    """Affine quantization: real = scale * (q - zero_point); per channel along `axis`."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0


@dataclass(frozen=True, slots=True)
class Value:
    """An emitted tensor: index, tflite shape, layout relative to torch, dtype, quantization.

    `dtype` is the torch-side dtype (float32 stays float32 even when the tensor is int8)."""

    index: int
    shape: tuple[int, ...]
    perm: tuple[int, ...]
    dtype: np.dtype
    q: QParams | None = None

    @property
    def torch_shape(self) -> tuple[int, ...]:
        out = [0] * len(self.shape)
        for i, p in enumerate(self.perm):
            out[p] = self.shape[i]
        return tuple(out)


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def qparams_for_range(lo: float, hi: float) -> QParams:
    """Per-tensor asymmetric int8 parameters covering [lo, hi] (widened to hold 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi):
        lo, hi = max(lo, -1e4), min(hi, 1e4)
    scale = (hi - lo) / 255.0 or 1e-8
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return QParams((scale,), (zp,))


def quantize_array(x: np.ndarray, q: QParams, dtype=np.int8) -> np.ndarray:
    info = np.iinfo(dtype)
    scale = np.asarray(q.scale, np.float64)
    zp = np.asarray(q.zero_point, np.float64)
    if len(q.scale) > 1:
        shape = [1] * x.ndim
        shape[q.axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dtype)


def symmetric_per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, QParams]:
    """int8 weights in [-127, 127], one scale per slice along `axis`."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red) if red else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float64)
    q = QParams(tuple(float(s) for s in scale), (0,) * len(scale), axis)
    return quantize_array(w, q), q


class ModelBuilder:
    """Accumulates one subgraph; `finish()` returns the schema ModelT."""

    def __init__(self, int8: bool = False) -> None:
        from ai_edge_litert import schema_py_generated as fb

        self.fb = fb
        self.int8 = int8
        self.dynamic_batch = False  # write -1 for the batch in reshapes
        self.tensors: list = []
        self.buffers = [fb.BufferT()]  # buffer 0 is the empty sentinel
        self.opcodes: dict[int, int] = {}
        self.opcode_list: list = []
        self.operators: list = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self._names: set[str] = set()
        self._relayout: dict[tuple, Value] = {}
        self._consts: dict[tuple, Value] = {}

    # ------------------------------------------------------------ tensors

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def tensor(self, name: str, shape, dtype, perm=None, q: QParams | None = None,
               data: np.ndarray | None = None, storage=None) -> Value:
        """A new tensor; `storage` is the numpy dtype written to the file (int8 when quantized)."""
        fb = self.fb
        dtype = np.dtype(dtype)
        storage = np.dtype(storage or (np.int8 if q is not None and dtype.kind == "f" else dtype))
        if storage not in TYPES:
            raise TargetError(f"TFLite has no tensor type for {storage}")
        t = fb.TensorT()
        t.shape = [int(d) for d in shape]
        t.type = TYPES[storage]
        t.name = self._unique(name)
        if q is not None:
            qp = fb.QuantizationParametersT()
            qp.scale = [float(s) for s in q.scale]
            qp.zeroPoint = [int(z) for z in q.zero_point]
            qp.quantizedDimension = q.axis
            t.quantization = qp
        if data is not None:
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data, storage).tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        perm = tuple(perm) if perm is not None else identity(len(t.shape))
        return Value(len(self.tensors) - 1, tuple(t.shape), perm, dtype, q)

    def const(self, array: np.ndarray, name: str = "const", q: QParams | None = None,
              storage=None, perm=None) -> Value:
        """A constant tensor (deduplicated on content); quantized with `q` when given."""
        a = np.asarray(array)
        key = (a.dtype.str, a.shape, a.tobytes(), q, str(storage), perm)
        hit = self._consts.get(key) if a.size <= 4096 else None
        if hit is not None:
            return hit
        data = quantize_array(a, q, np.dtype(storage or np.int8)) if q is not None else a
        v = self.tensor(name, a.shape, a.dtype, perm=perm, q=q, data=data, storage=storage)
        if a.size <= 4096:
            self._consts[key] = v
        return v

    def int_const(self, values, name: str = "shape") -> Value:
        return self.const(np.asarray(values, np.int32), name)

    def rename(self, v: Value, name: str) -> None:
        self._names.discard(self.tensors[v.index].name)
        self.tensors[v.index].name = self._unique(name)

    # ------------------------------------------------------------ operators

    def op(self, name: str, inputs, outputs, options=None, **fields) -> None:
        """Append builtin operator `name`; `options` is the options table name ("Conv2D")."""
        fb = self.fb
        code = getattr(fb.BuiltinOperator, name)
        if code not in self.opcodes:
            oc = fb.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = MIN_VERSION.get(name, 1)
            self.opcodes[code] = len(self.opcode_list)
            self.opcode_list.append(oc)
        o = fb.OperatorT()
        o.opcodeIndex = self.opcodes[code]
        o.inputs = [-1 if v is None else v.index for v in inputs]
        o.outputs = [v.index for v in outputs]
        if options is not None:
            obj = getattr(fb, f"{options}OptionsT")()
            for k, val in fields.items():
                setattr(obj, k, val)
            o.builtinOptionsType = getattr(fb.BuiltinOptions, f"{options}Options")
            o.builtinOptions = obj
        self.operators.append(o)

    def unary(self, name: str, x: Value, out_name: str, q: QParams | None = None,
              options=None, **fields) -> Value:
        """An op whose output has x's shape and layout; int8 output params `q` or x's."""
        out = self.tensor(out_name, x.shape, x.dtype, x.perm, q if q is not None else x.q)
        self.op(name, [x], [out], options, **fields)
        return out

    # ------------------------------------------------------------ layout

    def reshape(self, x: Value, shape, name: str, perm=None, new_shape=None) -> Value:
        """RESHAPE; with a dynamic batch, a leading axis kept from x is written as -1."""
        shape = tuple(int(d) for d in shape)
        if shape == x.shape and (perm is None or tuple(perm) == x.perm):
            return x
        if new_shape is None:
            new_shape = list(shape)
            if self.dynamic_batch and shape and x.shape and shape[0] == x.shape[0]:
                new_shape[0] = -1
        out = self.tensor(name, shape, x.dtype, perm, x.q)
        self.op("RESHAPE", [x, self.int_const(new_shape)], [out], "Reshape",
                newShape=list(new_shape))
        return out

    def relayout(self, x: Value, perm) -> Value:
        """x with tflite data laid out as torch.permute(perm); TRANSPOSE or RESHAPE if needed."""
        perm = tuple(perm)
        if perm == x.perm:
            return x
        key = (x.index, x.perm, perm)  # a permute shares the index, not the layout
        if key in self._relayout:
            return self._relayout[key]
        t = tuple(x.perm.index(p) for p in perm)  # new tflite axis i = old tflite axis t[i]
        shape = tuple(x.shape[i] for i in t)
        name = self.tensors[x.index].name + "_t"
        moved = [i for i in t if x.shape[i] != 1]
        if moved == sorted(moved):  # only size-1 axes move: the bytes stay in order
            out = self.reshape(x, shape, name, perm)
        else:
            out = self.tensor(name, shape, x.dtype, perm, x.q)
            self.op("TRANSPOSE", [x, self.int_const(t, "perm")], [out], "Transpose")
        self._relayout[key] = out
        return out

    def plain(self, x: Value) -> Value:
        """x in torch's own axis order."""
        return self.relayout(x, identity(len(x.shape)))

    def requantize(self, x: Value, q: QParams | None, name: str) -> Value:
        """x carrying int8 parameters q (a QUANTIZE int8 -> int8 when they differ)."""
        if not self.int8 or q is None or x.q == q or x.dtype.kind != "f":
            return x
        out = self.tensor(name, x.shape, x.dtype, x.perm, q)
        self.op("QUANTIZE", [x], [out])
        return out

    def dequantize(self, x: Value, name: str) -> Value:
        """x as float (a DEQUANTIZE when x is int8)."""
        if x.q is None:
            return x
        out = self.tensor(name, x.shape, x.dtype, x.perm, storage=np.float32)
        self.op("DEQUANTIZE", [x], [out])
        return out

    # ------------------------------------------------------------ model

    def finish(self, description: str, input_names: list[str],
               output_names: list[str]) -> object:
        fb = self.fb
        sg = fb.SubGraphT()
        sg.tensors, sg.operators = self.tensors, self.operators
        sg.inputs, sg.outputs = list(self.inputs), list(self.outputs)
        sg.name = "main"
        model = fb.ModelT()
        model.version = 3
        model.description = description
        model.operatorCodes = self.opcode_list
        model.subgraphs = [sg]
        model.buffers = self.buffers
        sig = fb.SignatureDefT()
        sig.signatureKey = "serving_default"
        sig.subgraphIndex = 0
        sig.inputs = [_tmap(fb, n, i) for n, i in zip(input_names, self.inputs)]
        sig.outputs = [_tmap(fb, n, i) for n, i in zip(output_names, self.outputs)]
        model.signatureDefs = [sig]
        return model


def _tmap(fb, name: str, index: int):
    m = fb.TensorMapT()
    m.name, m.tensorIndex = name, index
    return m


def write_model(model, path) -> None:
    from ai_edge_litert.tools import flatbuffer_utils

    flatbuffer_utils.write_model(model, str(path))
