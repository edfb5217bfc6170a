"""TensorRT target: what TensorRT consumes, built where TensorRT cannot be installed.

TensorRT's libraries are not on PyPI, so the bundle holds the ONNX model TensorRT's parser
reads (fp32; or INT8 with explicit Q/DQ by TensorRT's rules: symmetric, zero point 0,
per-channel weights, mean-minmax calibration), checked against the parser's supported
operators, plus `build_engine.sh` (trtexec) and `build_engine.py` (the Python builder) with the
precision flags and an optimization profile for the dynamic batch. The ONNX is verified with
onnxruntime here; `layerwise build-engine BUNDLE` builds the engine where TensorRT imports.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from layerwise.base.errors import TargetError
from layerwise.base.recipe import QuantRecipe
from layerwise.targets import TargetInfo
from layerwise.targets import onnx as onnx_target

# TensorRT: symmetric int8 everywhere; it fuses its own activations, so only the weighted
# ops get Q/DQ; float bias (README: INT8 recipes)
INFO = TargetInfo(name="tensorrt", runtime="onnx", precisions=("fp32", "fp16", "int8"),
                  extra=None,
                  legalize=("legalize_views", "legalize_copies", "unguard_softmax"),
                  recipe=QuantRecipe(symmetric_activations=True, calibration="mean_minmax",
                                     quantize_bias=False, bias_correction=False,
                                     op_types=("Conv", "MatMul", "Gemm")))
TENSORRT_VERSION = "10.x"
MAX_BATCH = 32

# ONNX operators TensorRT 10's ONNX parser maps (onnx-tensorrt's operator support matrix).
SUPPORTED = frozenset(["Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GroupNormalization", "HardSigmoid", "HardSwish", "Identity", "If", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "LRN", "LSTM", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mish", "Mod", "Mul", "Neg", "NonZero", "Not", "OneHot", "Or", "Pad", "Pow", "PRelu", "QuantizeLinear", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "RNN", "Round", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Where", "Xor", "GRU", "Loop"])


def emit(ir, out_dir: Path, opts=None) -> dict:
    """model.onnx (fp32, or QDQ INT8 by TensorRT's rules) + engine build scripts."""
    import onnx

    precision = getattr(opts, "precision", "fp32") or "fp32"
    entry = onnx_target.emit(ir, out_dir, opts)
    model = onnx.load(str(out_dir / entry["file"]), load_external_data=False)
    check_parser_ops(model)
    if precision == "int8":
        check_qdq_rules(model)
    dynamic = [s["name"] for s in ir.input_specs() if s["shape"][:1] == ["batch"]]
    shapes = {s["name"]: s["shape"] for s in ir.input_specs()}
    (out_dir / "build_engine.sh").write_text(trtexec_script(entry["file"], precision, shapes))
    (out_dir / "build_engine.py").write_text(builder_script(entry["file"], precision, shapes))
    return {**entry, "files": [*entry["files"], "build_engine.sh", "build_engine.py"],
            "precision": precision, "tensorrt": TENSORRT_VERSION,
            "engine": {"file": "model.plan", "dynamic_inputs": dynamic, "max_batch": MAX_BATCH}}


def check_parser_ops(model) -> None:
    """Refuse a model with an ONNX operator TensorRT's parser does not map."""
    bad = sorted({n.op_type for n in model.graph.node
                  if n.domain in ("", "ai.onnx") and n.op_type not in SUPPORTED})
    if bad:
        raise TargetError(f"TensorRT {TENSORRT_VERSION}'s ONNX parser has no {', '.join(bad)}; "
                          "try --target onnx or openvino")


def check_qdq_rules(model) -> None:
    """TensorRT's explicit-quantization rules: int8 Q/DQ, zero point 0, and per-channel
    (axis 0) scales for weights."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        if zp is not None:
            arr = numpy_helper.to_array(zp)
            if arr.dtype.name != "int8" or arr.any():
                raise TargetError(f"{node.name}: TensorRT needs int8 Q/DQ with zero point 0; "
                                  "the recipe produced another")


def _profile(shapes: dict[str, list]) -> dict[str, tuple[list, list, list]]:
    out = {}
    for name, shape in shapes.items():
        if shape[:1] == ["batch"]:
            rest = [int(d) for d in shape[1:]]
            out[name] = ([1, *rest], [1, *rest], [MAX_BATCH, *rest])
    return out


def decoder_profile(generation: dict) -> dict[str, tuple[list, list, list]]:
    """A text-generation step's optimization profile at batch 1: one new token up to a whole
    prompt of max_seq, and a cache from empty to max_seq tokens."""
    n, kv, hd = generation["max_seq"], generation["kv_heads"], generation["head_dim"]
    out = {"input_ids": ([1, 1], [1, 1], [1, n]), "attention_mask": ([1, 1], [1, n // 2], [1, n])}
    for i in range(generation["layers"]):
        for k in ("key", "value"):
            out[f"past_key_values.{i}.{k}"] = ([1, kv, 0, hd], [1, kv, n // 2, hd],
                                               [1, kv, n, hd])
    return out


def emit_decoder(model, out_dir: Path, precision: str, generation: dict) -> dict:
    """The onnx decoder step (fp32, or fp16 weights) TensorRT's parser reads, checked against
    its operators, with engine build scripts whose profile spans prefill and decode."""
    import onnx

    from layerwise.targets.onnx.decoder import emit_decoder as onnx_decoder

    if precision not in ("fp32", "fp16"):
        raise TargetError(f"a text-generation bundle for tensorrt takes --precision fp32 or "
                          f"fp16, not {precision} (int4/int8 weights here are onnxruntime's "
                          "MatMulNBits, which TensorRT does not parse)")
    entry = onnx_decoder(model, out_dir, "fp32", None)  # fp16: TensorRT's own flag
    check_parser_ops(onnx.load(str(out_dir / entry["file"]), load_external_data=False))
    prof = decoder_profile(generation)
    (out_dir / "build_engine.sh").write_text(trtexec_script(entry["file"], precision, {}, prof))
    (out_dir / "build_engine.py").write_text(builder_script(entry["file"], precision, {}, prof))
    return {**entry, "files": [*entry["files"], "build_engine.sh", "build_engine.py"],
            "precision": precision, "tensorrt": TENSORRT_VERSION,
            "engine": {"file": "model.plan", "profile": prof}}


def trtexec_script(model: str, precision: str, shapes: dict[str, list],
                   prof: dict | None = None) -> str:
    """A trtexec command with the precision flags and the optimization profile (the dynamic
    batch of `shapes`, or `prof` as given)."""
    prof = prof or _profile(shapes)
    flags = [f"--onnx={model}", "--saveEngine=model.plan"]
    if precision == "fp16":
        flags.append("--fp16")
    if precision == "int8":
        flags += ["--int8", "--fp16"]  # Q/DQ layers run int8; the rest may use fp16
    if prof:
        for key, i in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            flags.append(key + "=" + ",".join(
                f"{n}:{'x'.join(map(str, p[i]))}" for n, p in prof.items()))
    return ("#!/usr/bin/env bash\n# Build the TensorRT engine next to this script (needs TensorRT"
            f" {TENSORRT_VERSION}).\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n"
            f"trtexec {' '.join(shlex.quote(f) for f in flags)}\n")


def builder_script(model: str, precision: str, shapes: dict[str, list],
                   prof: dict | None = None) -> str:
    """A TensorRT Python builder script equivalent to the trtexec command."""
    prof = prof or _profile(shapes)
    lines = [
        '"""Build model.plan from the ONNX with TensorRT\'s Python API (run beside it)."""',
        "import sys", "from pathlib import Path", "", "import tensorrt as trt", "",
        "here = Path(__file__).resolve().parent",
        "logger = trt.Logger(trt.Logger.WARNING)",
        "builder = trt.Builder(logger)",
        "network = builder.create_network(0)",
        "parser = trt.OnnxParser(network, logger)",
        f"if not parser.parse_from_file(str(here / {model!r})):",
        "    sys.exit('\\n'.join(str(parser.get_error(i)) for i in range(parser.num_errors)))",
        "config = builder.create_builder_config()",
    ]
    if precision in ("fp16", "int8"):
        lines.append("config.set_flag(trt.BuilderFlag.FP16)")
    if precision == "int8":
        lines.append("config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ in the ONNX")
    if prof:
        lines.append("profile = builder.create_optimization_profile()")
        lines += [f"profile.set_shape({n!r}, {tuple(p[0])}, {tuple(p[1])}, {tuple(p[2])})"
                  for n, p in prof.items()]
        lines.append("config.add_optimization_profile(profile)")
    lines += ["engine = builder.build_serialized_network(network, config)",
              "if engine is None:", "    sys.exit('TensorRT could not build the engine')",
              "(here / 'model.plan').write_bytes(engine)", "print('wrote', here / 'model.plan')"]
    return "\n".join(lines) + "\n"


def engine_builder(b) -> str:
    """The builder script for an opened bundle, written anew from its checked manifest: the
    bundle's own build_engine.py is someone else's code and is never run."""
    model = b.manifest["model"]
    precision = model.get("precision", b.manifest.get("precision", "fp32"))
    if precision not in ("fp32", "fp16", "int8"):
        raise TargetError(f"{b.dir}: precision {precision!r} is not one TensorRT builds; "
                          "re-create the bundle with `layerwise compile --target tensorrt`")
    shapes = {s["name"]: s["shape"] for s in b.manifest["inputs"]}
    if "generation" in b.manifest:
        from layerwise.runtime.generate import generation_section

        return builder_script(model["file"], precision, {},
                              decoder_profile(generation_section(b)))
    return builder_script(model["file"], precision, shapes)


def build_engine(bundle: str | Path) -> Path:
    """Build model.plan beside the bundle's ONNX where TensorRT and a GPU exist (with the
    script engine_builder writes); else a one-line error."""
    from layerwise.runtime import open_bundle

    b = open_bundle(bundle)
    if b.target != "tensorrt":
        raise TargetError(f"{b.dir} is a {b.target} bundle; compile with --target tensorrt")
    source = engine_builder(b)
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        raise TargetError("TensorRT is not installed here (its libraries are not on PyPI): copy "
                          f"{b.dir} to a machine with TensorRT and run build_engine.sh") from e
    script = b.dir.resolve() / "build_engine.py"
    exec(compile(source, str(script), "exec"), {"__file__": str(script), "__name__": "__main__"})
    return b.dir / "model.plan"
