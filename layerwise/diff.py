"""`layerwise diff BUNDLE`: where a compiled model departs from the original, layer by layer.

The original is lifted again from the bundle's spec (or `reference`) and run in torch,
keeping every layer's output; the bundle is run by its own runtime with the same layers'
tensors exposed (`runtime/taps.py`). Each layer's error is the accumulated error at its
output — quantization, pruning and the runtime's arithmetic together — so the rows read as a
curve: where it jumps is where the model goes wrong. Layers a plan dropped are listed as such.
"""

from __future__ import annotations

import itertools
import json
import operator
from pathlib import Path

import numpy as np

from layerwise.base.errors import LayerwiseError

# 4-d and 3-d layouts a runtime may hold a tensor in (TFLite: channels last)
_PERMS = {4: [(0, 2, 3, 1)], 3: [(0, 2, 1)]}


def diff(bundle: str | Path, reference: str | None = None, inputs: str | Path | None = None,
         *, depth: str = "all", source_options=None, progress=lambda _: None) -> dict:
    """Per-layer error of `bundle` against the original model on one batch of inputs
    (the bundle's example inputs unless `inputs` names an .npz)."""
    import torch

    from layerwise.api import lift
    from layerwise.compiler.capture import Capture
    from layerwise.runtime import open_bundle
    from layerwise.runtime.taps import open_taps

    if depth not in ("all", "blocks"):
        raise LayerwiseError(f"unknown --depth {depth!r}; use all or blocks")
    b = open_bundle(bundle)
    taps = open_taps(b.target, b.model_path)  # refuses a runtime with no taps before lifting
    feeds = _feeds(b, inputs)
    spec = reference or b.manifest.get("spec")
    if not spec:
        raise LayerwiseError("the bundle names no model spec; give --reference SPEC")
    progress(f"lifting the reference {spec}")
    ir = lift(spec, source_options, progress)
    missing = [s["name"] for s in ir.input_specs() if s["name"] not in feeds]
    if missing:
        raise LayerwiseError(f"the inputs lack {missing}, which the reference takes; give "
                             "--inputs with every input of the model")
    gm = ir.module()
    picks = _reference_nodes(ir, gm, depth)
    cap = Capture(gm, set(picks.values()))
    progress("running the reference with every layer's output kept")
    with torch.no_grad():
        outs = cap.run_feed({k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()
                             if k in {s["name"] for s in ir.input_specs()}})
    nodes = {n.name: n for n in gm.graph.nodes}
    final = [a.name for a in gm.graph.output_node().all_input_nodes]
    names = set(taps.names)
    wanted = {path: _candidates(taps, path, nodes[node], final) for path, node in picks.items()}
    progress(f"running the bundle on {b.target} with {len(picks)} layers' tensors exposed")
    got = taps.run(feeds, [n for c in wanted.values() for n in c])
    dropped = _dropped(b.manifest)
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    rows = []
    for layer in sorted((la for la in ir.layers if la.path in picks),
                        key=lambda la: order.get(picks[la.path], -1)):
        row = {"layer": layer.path, "kind": layer.kind, "block": layer.block}
        ref = cap.values.get(picks[layer.path])
        if any(layer.path == d or layer.path.startswith(d + ".") for d in dropped):
            row["status"] = "dropped"
        elif ref is None:
            row["status"] = "no reference tensor"
        else:
            row.update(_match(ref.detach().float().numpy(), wanted[layer.path], got))
            users = [u.name for u in nodes[picks[layer.path]].users if u.name in names]
            if row["status"] != "ok" and users:
                row["status"] = f"fused into {users[0]}"  # the runtime computes them as one
        rows.append(row)
    result = {"bundle": str(Path(bundle)), "target": b.target, "reference": spec,
              "precision": b.manifest.get("precision"), "layers": rows,
              "output": _output_row(taps, feeds, outs)}
    result["summary"] = _summary(rows)
    return result


def _feeds(b, inputs) -> dict[str, np.ndarray]:
    if inputs is None:
        feeds = b.example_inputs()
    else:
        p = Path(inputs)
        if not p.is_file():
            raise LayerwiseError(f"--inputs {p} does not exist; give an .npz of named inputs")
        try:
            with np.load(p, allow_pickle=False) as z:
                feeds = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise LayerwiseError(f"--inputs {p} is not a readable .npz ({e})") from e
    lack = [t["name"] for t in b.manifest.get("inputs", []) if t["name"] not in feeds]
    if lack:
        raise LayerwiseError(f"the inputs lack {lack}, which the bundle takes; give --inputs "
                             "with every input of the model")
    # one batch row keeps models with a static batch happy and the comparison cheap
    return {k: np.ascontiguousarray(v[:1]) if np.ndim(v) else v for k, v in feeds.items()}


def _reference_nodes(ir, gm, depth: str) -> dict[str, str]:
    """Layer path -> the reference node holding its output (a block: its residual output)."""
    from layerwise.compiler.passes.drop_layers import DropLayersError, block_boundary

    picks = {}
    for layer in ir.layers:
        if depth == "blocks" and not layer.block:
            continue
        if layer.kind in ("dropout",) or not layer.outputs:
            continue
        if layer.block:
            try:
                picks[layer.path] = block_boundary(gm.graph, layer)[1].name
                continue
            except DropLayersError:
                pass
        picks[layer.path] = layer.outputs[-1]
    return picks


def _candidates(taps, path: str, node, final: list[str]) -> list[str]:
    """Tensors of the bundle that may hold `path`'s output (reference node `node`), best
    first: its own name (OpenVINO: its dequantized copy first, as its converter folds an
    activation into the FakeQuantize after it and leaves the name on the op before), the
    model output it is, the last tensor an emitter derived from its name (`NODE_…`, where
    it lowered one op into several; a tuple item is named after its producer), then (ONNX)
    the tensors leaving the layer's scope, last first."""
    names = set(taps.names)
    src = node.args[0].name if node.target is operator.getitem else node.name
    order = (f"{node.name}_DequantizeLinear_Output", node.name)
    out = [n for n in (order if taps.target == "openvino" else order[::-1]) if n in names]
    if node.name in final and final.index(node.name) < len(taps.outputs):
        out.append(taps.outputs[final.index(node.name)])
    out += [n for n in reversed(taps.names) if n == src or (
        n.startswith(src + "_") and not n[len(src) + 1:][:1].isdigit())][:1]
    out += [n for n in reversed(taps.by_scope(path))]
    return list(dict.fromkeys(out))


def _match(ref: np.ndarray, candidates: list[str], got: dict) -> dict:
    for name in candidates:
        v = got.get(name)
        if v is None:
            continue
        v = _aligned(v, ref.shape)
        if v is not None:
            return {"status": "ok", "tensor": name, **compare(ref, v)}
    return {"status": "not in bundle"}


def _aligned(v: np.ndarray, shape: tuple) -> np.ndarray | None:
    if v.shape == shape:
        return v
    if v.size != int(np.prod(shape)):
        return None
    if v.ndim and len(shape) and v.shape[-1] == shape[-1] and v.ndim != len(shape):
        return v.reshape(shape)  # leading dimensions folded (a Gemm on 2-d rows)
    if len(v.shape) == len(shape):
        for perm in _PERMS.get(len(shape), []):
            if tuple(np.array(shape)[list(perm)]) == v.shape:
                return np.transpose(v, np.argsort(perm))
    return None


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    """Relative L2 error, cosine and signal-to-quantization-noise ratio (dB) of `got`."""
    r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    noise = float(np.sum((g - r) ** 2))
    signal = float(np.sum(r ** 2))
    nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    return {"rel_err": float(np.sqrt(noise / signal)) if signal > 0 else float(np.sqrt(noise)),
            "cosine": float(r @ g / (nr * ng)) if nr > 0 and ng > 0 else float(nr == ng),
            "sqnr_db": float(10 * np.log10(signal / noise)) if noise > 0 and signal > 0
            else None,
            "max_abs": float(np.max(np.abs(g - r))) if r.size else 0.0}


def _output_row(taps, feeds, outs) -> dict:
    from layerwise.runtime.runners import open_runner

    runner = open_runner("onnx" if taps.target == "tensorrt" else taps.target, taps.model)
    got = runner.run({n: feeds[n] for n in runner.input_names})
    ref = outs[0].detach().float().numpy()
    v = _aligned(np.asarray(got[0], np.float32), ref.shape)
    return compare(ref, v) if v is not None else {"status": "output shape differs"}


def _dropped(manifest: dict) -> list[str]:
    passes = (manifest.get("plan") or {}).get("passes") or []
    return [p for rec in passes if isinstance(rec, dict) for p in rec.get("dropped", [])]


def _summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if r.get("status") == "ok"]
    out = {"layers": len(rows), "compared": len(ok),
           "dropped": sum(r.get("status") == "dropped" for r in rows),
           "fused": sum(r.get("status", "").startswith("fused") for r in rows)}
    out["not_found"] = len(rows) - out["compared"] - out["dropped"] - out["fused"]
    if ok:
        worst = max(ok, key=lambda r: r["rel_err"])
        jumps = [(b["rel_err"] - a["rel_err"], b) for a, b in itertools.pairwise(ok)]
        out["worst"] = {"layer": worst["layer"], "rel_err": worst["rel_err"]}
        if jumps:
            step, r = max(jumps, key=lambda j: j[0])
            out["largest_jump"] = {"layer": r["layer"], "rel_err_added": step}
    return out


def render(result: dict, top: int = 0) -> str:
    """A text table; `top` > 0 keeps only that many rows of largest error (and the blocks)."""
    rows = result["layers"]
    if top:
        ok = sorted((r for r in rows if r.get("status") == "ok"),
                    key=lambda r: -r["rel_err"])[:top]
        keep = {id(r) for r in ok}
        rows = [r for r in rows if id(r) in keep or r.get("block")]
    lines = [f"{'layer':48s} {'kind':10s} {'rel_err':>9s} {'cosine':>8s} {'SQNR dB':>8s}"]
    for r in rows:
        name = ("▸ " if r.get("block") else "  ") + r["layer"]
        if r.get("status") != "ok":
            lines.append(f"{name[:48]:48s} {r['kind'][:10]:10s} {r['status']}")
            continue
        sq = f"{r['sqnr_db']:8.1f}" if r["sqnr_db"] is not None else "     inf"
        lines.append(f"{name[:48]:48s} {r['kind'][:10]:10s} {r['rel_err']:9.4f} "
                     f"{r['cosine']:8.5f} {sq}")
    o, s = result["output"], result["summary"]
    if "rel_err" in o:
        lines.append(f"{'output':48s} {'':10s} {o['rel_err']:9.4f} {o['cosine']:8.5f}")
    if not result["layers"]:
        lines.append("no layers to compare (a model with no repeated blocks: use --depth all)")
    lines.append(f"{s['compared']} of {s['layers']} layers compared, {s['dropped']} dropped, "
                 f"{s['fused']} fused with the op after them, {s['not_found']} not found in "
                 f"the {result['target']} bundle")
    if "largest_jump" in s:
        j = s["largest_jump"]
        lines.append(f"largest jump: {j['layer']} (+{j['rel_err_added']:.4f} rel_err)")
    return "\n".join(lines)


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2)
