"""Load a `torch.export.save` archive that someone else wrote, without running its code.

`torch.export.load` trusts its file: it unpickles weights and constants flagged `use_pickle`
(`weights_only=False`), custom and opaque objects, legacy `.pt` payloads and sample inputs
that fail the safe loader; it hands every shape expression to `sympy.sympify` (Python `eval`);
it resolves node targets by walking attributes of `torch` (`torch.os.system` is one); it
loads AOTInductor shared libraries; and `ExportedProgram.module()` `exec`s the archive's
guard code. So before anything is deserialised, this reads the archive with `zipfile` and
refuses every one of those, then loads with `torch.load` held to `weights_only=True`, checks
the node targets once more and drops the stored guards (input checks only; layerwise
re-exports with its own).
"""

from __future__ import annotations

import contextlib
import io
import json
import operator
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from layerwise.base.errors import SourceError

RE_EXPORT = ("re-export it with torch.export.save(torch.export.export(model, args), FILE) from "
             "a plain module (no tensor subclasses, custom objects or AOTInductor packages)")

# Node targets a program may call: operators of these namespaces, Python's arithmetic on
# symbolic sizes, and math's pure functions.
OP_NAMESPACES = frozenset({"aten", "prims", "higher_order", "quantized_decomposed",
                           "torchvision"})
OPERATOR_FNS = frozenset({"getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow",
                          "neg", "pos", "abs", "eq", "ne", "lt", "le", "gt", "ge", "and_",
                          "or_", "xor", "not_", "invert", "lshift", "rshift"})
TORCH_SYM_FNS = frozenset({"sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite",
                           "sym_sqrt", "sym_sum", "_sym_sqrt", "sym_fresh_size"})
_OP_TARGET = re.compile(r"torch\.ops\.([A-Za-z_][A-Za-z0-9_]*)\.[A-Za-z_][A-Za-z0-9_]*"
                        r"(\.[A-Za-z_][A-Za-z0-9_]*)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Shape expressions (sympy's srepr of symbolic sizes): the callables and names they may use.
SYMPY_CALLS = frozenset({
    "Symbol", "Dummy", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max",
    "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan",
    "LessThan", "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "Piecewise",
    "ExprCondPair", "floor", "ceiling", "sqrt", "Tuple", "BooleanTrue", "BooleanFalse",
})
SYMPY_NAMES = frozenset({"True", "False", "oo", "zoo", "nan", "true", "false", "S", "pi", "E",
                         "Zero", "One", "NegativeOne", "Half", "Infinity", "NegativeInfinity"})
_EXPR_TOKEN = re.compile(
    r"\s+|'[A-Za-z][A-Za-z0-9_]*'|\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?"
    r"|[A-Za-z_][A-Za-z0-9_]*|\*\*|//|==|!=|<=|>=|[-+*/%(),<>=&|~]")
_SYMBOL = re.compile(r"[a-z]{1,3}\d+")


def _torch_sympy_functions() -> frozenset[str]:
    import torch.utils._sympy.functions as fns

    return frozenset(getattr(fns, "__all__", ()))


def _refuse(path: Path, what: str) -> SourceError:
    return SourceError(f"{path}: refused to load: {what}; {RE_EXPORT}")


def check_expr(expr: str, allowed_calls: frozenset[str]) -> str | None:
    """Why `expr` is not a plain symbolic-size expression (None when it is): sympy names and
    numbers only, no attribute access, no strings but plain symbol names."""
    pos, tokens = 0, []
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if not m:
            return f"character {expr[pos]!r}"
        if not m.group().isspace():
            tokens.append(m.group())
        pos = m.end()
    for i, tok in enumerate(tokens):
        if not _NAME.fullmatch(tok):
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if nxt == "(":
            ok = tok in allowed_calls or tok.startswith(("OpaqueUnaryFn_", "BitwiseFn_"))
        elif nxt == "=" and i > 0 and tokens[i - 1] == ",":
            ok = tok.islower()  # a keyword argument (positive=True)
        else:
            ok = tok in SYMPY_NAMES or bool(_SYMBOL.fullmatch(tok))
        if not ok or "__" in tok:
            return f"name {tok!r}"
    return None


def check_target(target: str) -> bool:
    """Whether a serialized node target is an operator, sym arithmetic or a math function."""
    if m := _OP_TARGET.fullmatch(target):
        return m.group(1) in OP_NAMESPACES
    head, _, name = target.partition(".")
    if head == "_operator":
        return name in OPERATOR_FNS
    if head == "math":
        import math

        return _NAME.fullmatch(name) is not None and callable(getattr(math, name, None))
    return head == "torch" and name in TORCH_SYM_FNS


def _walk(obj: Any) -> Iterator[tuple[str, Any, dict]]:
    """(key, value, owner) for every dict entry in a JSON tree."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                yield k, v, o
                stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)


def _payload_config(zf: zipfile.ZipFile, name: str, path: Path) -> dict:
    try:
        config = json.loads(zf.read(name))["config"]
    except (KeyError, ValueError, TypeError) as e:
        raise _refuse(path, f"its {PurePosixPath(name).name} is not a payload config") from e
    if not isinstance(config, dict):
        raise _refuse(path, f"its {PurePosixPath(name).name} is not a payload config")
    return config


def check_archive(path: Path) -> None:
    """Refuse an archive with any payload torch would unpickle, compiled code, or a shape
    expression or node target outside the plain operator set."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise SourceError(f"{path} is not a torch.export archive (not a zip file); save the "
                          "program with torch.export.save") from e
    with zf:
        names = zf.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any(".." in PurePosixPath(n).parts for n in names):
            raise _refuse(path, "it is not one archive folder")
        root = roots.pop() + "/"
        rel = [n[len(root):] for n in names]
        if f"{root}archive_format" not in names or f"{root}models/" not in {
                n[: len(root) + 7] for n in names}:
            raise SourceError(f"{path} is not a torch.export archive of this format (no "
                              f"models/); {RE_EXPORT}")
        if any(r.startswith("data/aotinductor/") for r in rel):
            raise _refuse(path, "it holds AOTInductor compiled code")
        models = [r[len("models/"):-len(".json")] for r in rel
                  if r.startswith("models/") and r.endswith(".json")]
        calls = SYMPY_CALLS | _torch_sympy_functions()
        for model in models:
            for legacy in (f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
                if legacy in rel:
                    raise _refuse(path, f"it stores {legacy} as a pickle (legacy format)")
            for kind in ("weights", "constants"):
                cfg = f"{root}data/{kind}/{model}_{kind}_config.json"
                if cfg not in names:
                    continue
                for fqn, meta in _payload_config(zf, cfg, path).items():
                    if not isinstance(meta, dict) or meta.get("use_pickle"):
                        raise _refuse(path, f"{kind} entry {fqn!r} is a pickle")
                    p = str(meta.get("path_name", ""))
                    if kind == "constants" and not p.startswith("tensor_"):
                        raise _refuse(path, f"constant {fqn!r} is a custom or opaque object")
            sample = f"{root}data/sample_inputs/{model}.pt"
            if sample in names:
                _check_tensors_only(zf.read(sample), path)
            try:
                program = json.loads(zf.read(f"{root}models/{model}.json"))
            except ValueError as e:
                raise _refuse(path, f"models/{model}.json is not JSON") from e
            for key, value, owner in _walk(program):
                if key == "expr_str":
                    if not isinstance(value, str) or (why := check_expr(value, calls)):
                        raise _refuse(path, f"a shape expression uses {why or 'a non-string'}")
                elif (key == "target" and "inputs" in owner
                      and not (isinstance(value, str) and check_target(value))):
                    raise _refuse(path, f"a node calls {str(value)[:80]!r}, not an operator")


def _check_tensors_only(data: bytes, path: Path) -> None:
    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # noqa: BLE001 - anything the safe unpickler refuses
        raise _refuse(path, "its sample inputs hold objects other than tensors") from e


@contextlib.contextmanager
def _weights_only() -> Iterator[None]:
    """Within the block, torch.load never runs the full unpickler and pickle.loads in the
    archive reader refuses: a second line behind check_archive."""
    import torch
    import torch.export.pt2_archive._package as package

    real_load, real_pickle = torch.load, package.pickle

    def safe_load(f, *args, weights_only: bool = True, **kwargs):
        return real_load(f, *args, weights_only=True, **kwargs)

    class NoPickle:
        @staticmethod
        def loads(*_args, **_kwargs):
            raise RuntimeError("pickled payloads are refused")

    torch.load, package.pickle = safe_load, NoPickle
    try:
        yield
    finally:
        torch.load, package.pickle = real_load, real_pickle


def load_program(path: str | Path):
    """The ExportedProgram in `path`, checked as above; SourceError for anything refused."""
    import torch

    p = Path(path)
    check_archive(p)
    try:
        with _weights_only():
            ep = torch.export.load(str(p))
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad archive
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise SourceError(f"{p} is not a loadable torch.export program: {first}; "
                          f"{RE_EXPORT}") from e
    for gm in ep.graph_module.modules():
        graph = getattr(gm, "graph", None)
        for node in graph.nodes if graph is not None else ():
            if node.op == "call_function" and not _allowed_callable(node.target):
                raise _refuse(p, f"node {node.name} calls {node.target!r}, not an operator")
    ep._guards_code = []
    return ep


def _allowed_callable(fn: Any) -> bool:
    import math

    import torch

    if isinstance(fn, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return fn.namespace in OP_NAMESPACES
    if isinstance(fn, torch._ops.HigherOrderOperator):
        return True
    if getattr(fn, "__module__", None) == "_operator" or fn in vars(operator).values():
        return getattr(fn, "__name__", "") in OPERATOR_FNS
    if getattr(fn, "__module__", None) == "math":
        return getattr(math, getattr(fn, "__name__", ""), None) is fn
    return getattr(fn, "__name__", "") in TORCH_SYM_FNS and getattr(torch, fn.__name__) is fn
