"""Read a compiled model's intermediate tensors with its own runtime: what `layerwise diff`
compares layer by layer against the original model.

Each runtime names its tensors after the graph it was built from (the exporter names ONNX
tensors after the program's nodes, OpenVINO keeps those names as `NAME:0`, the TFLite emitter
names its tensors after the nodes it lowers), so a tensor is found by the node name. ONNX
files also carry each node's module scopes, which find a layer's output where the name
changed. Torch-free.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from layerwise.base.errors import BundleError, TargetError

TAPPED = ("onnx", "tensorrt", "openvino", "tflite")


@dataclass
class Taps:
    """The tensors of one model file in graph order: `names`, and for ONNX the module scopes
    of each tensor's producer (`scopes`) and the tensors used outside their producer's scope
    (`leaving`)."""

    target: str
    model: Path
    names: list[str]
    outputs: list[str] = field(default_factory=list)  # the model's outputs, in order
    scopes: dict[str, list[str]] = field(default_factory=dict)
    leaving: set[str] = field(default_factory=set)

    def by_scope(self, path: str) -> list[str]:
        """Tensors produced inside module `path` and used outside it, in graph order."""
        return [n for n in self.names if n in self.leaving and path in self.scopes.get(n, ())]

    def run(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """The float values of `names` (dequantized where the runtime stores integers)."""
        fn = {"onnx": _run_onnx, "tensorrt": _run_onnx, "openvino": _run_openvino,
              "tflite": _run_tflite}[self.target]
        return fn(self.model, feeds, list(dict.fromkeys(names)))


def open_taps(target: str, model: Path) -> Taps:
    """The tensor names of `model` for `target`'s runtime."""
    if target not in TAPPED:
        raise TargetError(f"diff reads intermediate tensors of {', '.join(TAPPED)} bundles; "
                          f"the {target} runtime does not expose them — compile the same "
                          "model with --target onnx to see where it diverges")
    if target in ("onnx", "tensorrt"):
        return _onnx_taps(target, model)
    if target == "openvino":
        import openvino as ov

        m = ov.Core().read_model(str(model))
        names = [_base(n) for op in m.get_ordered_ops() if op.get_type_name() != "Constant"
                 for o in op.outputs() for n in sorted(o.get_names())]
        outs = [_base(r.input_value(0).get_any_name()) for r in m.get_results()]
        return Taps(target, model, list(dict.fromkeys(names)), outs)
    interp = _litert(model)
    details = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    produced = [int(i) for op in interp._get_ops_details() for i in op["outputs"]]
    return Taps(target, model, [details[i] for i in produced if i in details],
                [d["name"] for d in interp.get_output_details()])


def _base(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def node_scopes(node) -> list[str]:
    """The module paths the torch exporter recorded for an ONNX node (outermost first)."""
    meta = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
    except (ValueError, SyntaxError):
        return []
    return [s for s in scopes if isinstance(s, str)]


def _onnx_taps(target: str, model: Path) -> Taps:
    import onnx

    g = onnx.load(str(model), load_external_data=False).graph
    scopes, names = {}, []
    node_scope = [node_scopes(node) for node in g.node]
    for node, s in zip(g.node, node_scope):
        if node.op_type == "Constant":
            continue
        for o in node.output:
            if o:
                names.append(o)
                scopes[o] = s
    leaving = {o.name for o in g.output}
    for node, s in zip(g.node, node_scope):
        mine = set(s)
        for i in node.input:
            if i in scopes and not set(scopes[i]) <= mine:
                leaving.add(i)
    return Taps(target, model, names, [o.name for o in g.output], scopes, leaving)


def _run_onnx(model: Path, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(model))  # external data is read from beside the model
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(m.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        inputs = [i.name for i in sess.get_inputs()]
        out = sess.run(names, {k: feeds[k] for k in inputs})
    except Exception as e:
        raise BundleError(f"onnxruntime cannot run {model.name} with its tensors exposed: "
                          f"{str(e).splitlines()[0][:200]}") from e
    return {n: np.asarray(v, np.float32) for n, v in zip(names, out)}


def _run_openvino(model: Path, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    import openvino as ov

    core = ov.Core()
    m = core.read_model(str(model))
    ports = {}
    for op in m.get_ordered_ops():
        for o in op.outputs():
            for n in o.get_names():
                if _base(n) in names and _base(n) not in ports:
                    ports[_base(n)] = o
    m.add_outputs(list({id(p): p for p in ports.values()}.values()))
    # A Result inside the CPU plugin's int8 kernels (low-precision transformations) reads
    # zeros and disturbs the final output, so the taps run the FakeQuantize arithmetic
    # as written (LP_TRANSFORMS_MODE NO: the same rounding, unfused), in f32 rather than the
    # plugin's bf16 default: the comparison is of the model's arithmetic.
    compiled = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                             "LP_TRANSFORMS_MODE": "NO"})
    req = compiled.create_infer_request()
    req.infer({i.get_any_name(): feeds[i.get_any_name()] for i in compiled.inputs})
    got = {}
    for out in compiled.outputs:
        for n in out.get_names():
            if _base(n) in names and _base(n) not in got:
                got[_base(n)] = np.asarray(req.get_tensor(out).data, np.float32).copy()
    return got


def _litert(model: Path, preserve: bool = False):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise TargetError("LiteRT is not installed: pip install ai-edge-litert") from e
    if not preserve:
        interp = Interpreter(model_path=str(model))
    else:  # without XNNPACK: a delegated subgraph's intermediate tensors are never written
        from ai_edge_litert.interpreter import OpResolverType

        interp = Interpreter(
            model_path=str(model), experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    return interp


def _run_tflite(model: Path, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    interp = _litert(model, preserve=True)
    for d in interp.get_input_details():
        x = feeds[d["name"]]
        if tuple(d["shape"]) != x.shape:
            interp.resize_tensor_input(d["index"], x.shape)
            interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], feeds[d["name"]].astype(d["dtype"]))
    interp.invoke()
    got = {}
    for d in interp.get_tensor_details():
        if d["name"] not in names or d["name"] in got:
            continue
        try:
            v = interp.get_tensor(d["index"])
        except ValueError:
            continue  # freed or never written
        scale, zero = d.get("quantization", (0.0, 0))
        v = np.asarray(v, np.float32)
        got[d["name"]] = (v - zero) * scale if scale else v
    return got
