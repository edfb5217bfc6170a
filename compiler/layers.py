"""The layer table: every module that owns FX nodes, with kind, parameters, FLOPs and blocks.

Built from each node's `nn_module_stack`, so it works for any architecture torch.export lifts.
A *block* is a repeated residual unit: one of ≥2 same-type siblings under one parent that
holds an elementwise residual add, and holds no smaller such unit itself. A stacked recurrent
module (nn.LSTM / GRU / RNN with num_layers ≥ 2) is one module but unrolls into one chain of
ops per layer; it is split by which layer's weights each op depends on into sub-layers
`PATH.l0`, `PATH.l1`, … that are blocks too.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch
from torch import fx

from layerwise.compiler.flops import node_flops

aten = torch.ops.aten

# (kind, pattern on the module's class name); the first match wins.
_KIND_RULES: list[tuple[str, str]] = [
    ("embedding", r"embed"),
    ("attention", r"attention|attn|multihead|mha"),
    ("mlp", r"mlp|feedforward|ffn|intermediate|densereludense"),
    ("norm", r"norm"),
    ("conv", r"conv"),
    ("recurrent", r"lstm|gru|rnn"),
    ("linear", r"linear"),
    ("activation", r"relu|gelu|silu|swish|sigmoid|tanh|hardtanh|activation|softmax"),
    ("pool", r"pool"),
    ("dropout", r"dropout|identity"),
]


@dataclass
class Layer:
    """One module of the model as it appears in the exported graph."""

    path: str
    type: str
    kind: str
    depth: int
    params: int
    flops: int
    nodes: list[str]
    block: bool = False
    group: str | None = None  # for blocks: path of the parent holding the repeated units
    inputs: list[str] = field(default_factory=list)  # boundary tensors entering the module
    outputs: list[str] = field(default_factory=list)  # tensors leaving the module
    annotations: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Layer:
        return cls(**d)


def classify(type_name: str, has_children: bool) -> str:
    """Kind of a module from its class name; containers and unknown parents are 'module'."""
    short = type_name.rsplit(".", 1)[-1].lower()
    for kind, pattern in _KIND_RULES:
        if re.search(pattern, short):
            return kind
    return "module" if has_children else "op"


def layer_of(node: fx.Node) -> str:
    """The innermost module path of a node ('' when it belongs to no submodule)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def in_layers(path: str, layers: tuple[str, ...] | list[str] | set[str]) -> bool:
    """Whether module `path` is one of `layers` or inside one."""
    return any(path == p or path.startswith(p + ".") for p in layers)


def build_layer_table(ep: torch.export.ExportedProgram) -> list[Layer]:
    """Layer table of an exported program, ordered by first appearance in the graph."""
    graph = ep.graph
    members: dict[str, list[fx.Node]] = {}
    types: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        for fqn, typ in (node.meta.get("nn_module_stack") or {}).values():
            if fqn.startswith("_empty_nn_module_stack"):
                continue  # placeholder stack that decompositions give nodes with no module
            members.setdefault(fqn, []).append(node)
            types.setdefault(fqn, typ if isinstance(typ, str) else typ.__qualname__)
    members.pop("", None)
    param_sizes = _param_sizes(ep)
    paths = list(members)
    has_children = {p: any(q.startswith(p + ".") for q in paths) for p in paths}
    layers = []
    for path in paths:
        nodes = members[path]
        node_set = set(nodes)
        layers.append(Layer(
            path=path,
            type=types[path].rsplit(".", 1)[-1],
            kind=classify(types[path], has_children[path]),
            depth=path.count(".") + 1,
            params=sum(n for name, n in param_sizes.items() if name.startswith(path + ".")),
            flops=sum(node_flops(n) for n in nodes),
            nodes=[n.name for n in nodes],
            inputs=_boundary_inputs(nodes, node_set, ep),
            outputs=[n.name for n in nodes if _is_tensor(n)
                     and any(u not in node_set for u in n.users)],
        ))
    _mark_blocks(layers, {p: members[p] for p in paths})
    for i in reversed(range(len(layers))):
        if layers[i].kind == "recurrent":
            layers[i + 1:i + 1] = _split_recurrent(layers[i], members[layers[i].path], ep)
    return layers


_RECURRENT_PARAM = re.compile(r"^(?:weight|bias)_(?:ih|hh)_l(\d+)(?:_reverse)?$")
_LAYOUT = {aten.permute.default, aten.view.default, aten.clone.default, aten.transpose.int,
           aten.squeeze.dims, aten.unsqueeze.default, aten.expand.default}


def _split_recurrent(parent: Layer, nodes: list[fx.Node], ep) -> list[Layer]:
    """Sub-layers (blocks) of a stacked recurrent module; [] for a single layer.

    An op belongs to the deepest layer whose weights it depends on; ops that depend on no
    weights (initial states) go with the first layer that uses them; the input and output
    layout ops (time-major permutes) stay with the parent only, so each sub-layer maps a
    [T, B, H] sequence to a [T, B, H] sequence.
    """
    param_of = {ph: fqn for ph, fqn in ep.graph_signature.inputs_to_parameters.items()}
    index: dict[str, int] = {}
    for ph, fqn in param_of.items():
        head, _, leaf = fqn.rpartition(".")
        m = _RECURRENT_PARAM.match(leaf)
        if head == parent.path and m:
            index[ph] = int(m.group(1))
    if len(set(index.values())) < 2:
        return []
    node_set = set(nodes)
    depth: dict[fx.Node, int | None] = {}
    for n in nodes:  # graph order: inputs come first
        ks = [index[a.name] for a in n.all_input_nodes if a.name in index]
        ks += [depth[a] for a in n.all_input_nodes if depth.get(a) is not None]
        depth[n] = max(ks) if ks else None
    external = {n for n in nodes if any(a not in node_set and a.name not in index
                                        and a.op != "get_attr" for a in n.all_input_nodes
                                        if _is_tensor(a))}
    for n in reversed(nodes):
        users = {depth[u] for u in n.users if u in node_set}
        if depth[n] is None and n not in external:  # weight-free: with its one user layer
            depth[n] = users.pop() if len(users) == 1 else None
        elif n.target in _LAYOUT and users <= {None}:  # trailing layout: the parent's
            depth[n] = None
        elif n.target in _LAYOUT and len(users) == 1 and (k := next(iter(users))) is not None \
                and depth[n] is not None and k > depth[n]:
            depth[n] = k  # the next layer's view of this layer's output sequence
    out = []
    state = ep.state_dict
    for k in sorted(set(index.values())):
        mine = [n for n in nodes if depth[n] == k]
        mine_set = set(mine)
        out.append(Layer(
            path=f"{parent.path}.l{k}", type=f"{parent.type}Layer", kind="recurrent",
            depth=parent.depth + 1,
            params=sum(state[param_of[ph]].numel() for ph, i in index.items()
                       if i == k and param_of[ph] in state),
            flops=sum(node_flops(n) for n in mine), nodes=[n.name for n in mine],
            block=True, group=parent.path,
            inputs=_boundary_inputs(mine, mine_set, ep),
            outputs=[n.name for n in mine if _is_tensor(n)
                     and any(u not in mine_set for u in n.users)]))
    return out


def _param_sizes(ep) -> dict[str, int]:
    state = ep.state_dict
    return {name: state[name].numel() for name in ep.graph_signature.parameters if name in state}


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _boundary_inputs(nodes, node_set, ep) -> list[str]:
    """Tensors produced outside the module (user inputs or other nodes; not weights)."""
    user_inputs = set(ep.graph_signature.user_inputs)
    seen: dict[str, None] = {}
    for n in nodes:
        for a in n.all_input_nodes:
            if a in node_set or not _is_tensor(a):
                continue
            if a.op == "placeholder" and a.name not in user_inputs:
                continue  # parameter, buffer or lifted constant
            seen.setdefault(a.name, None)
    return list(seen)


def _has_residual_add(nodes: list[fx.Node]) -> bool:
    for n in nodes:
        if n.target not in (aten.add.Tensor,) or len(n.args) < 2:
            continue
        a, b = n.args[0], n.args[1]
        if isinstance(a, fx.Node) and isinstance(b, fx.Node) and _is_tensor(a) and _is_tensor(b):
            shapes = {tuple(map(str, x.meta["val"].shape)) for x in (a, b, n)}
            if len(shapes) == 1:  # compared as text: comparing SymInts would add guards
                return True
    return False


def _mark_blocks(layers: list[Layer], members: dict[str, list[fx.Node]]) -> None:
    by_path = {layer.path: layer for layer in layers}
    siblings: dict[tuple[str, str], list[Layer]] = {}
    for layer in layers:
        parent, _, name = layer.path.rpartition(".")
        if name.isdigit():
            siblings.setdefault((parent, layer.type), []).append(layer)
    candidates = {
        layer.path: parent
        for (parent, _), group in siblings.items() if len(group) >= 2
        for layer in group if _has_residual_add(members[layer.path])
    }
    for path, parent in candidates.items():
        if any(other.startswith(path + ".") for other in candidates):
            continue  # a stage of smaller residual units, not a unit itself
        by_path[path].block = True
        by_path[path].group = parent
        by_path[path].kind = "block"


def blocks(layers: list[Layer]) -> list[Layer]:
    """The residual blocks of a layer table, in graph order."""
    return [layer for layer in layers if layer.block]
