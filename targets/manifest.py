"""A bundle's manifest: what was compiled, how it was verified, the shapes it takes."""

from __future__ import annotations

import platform
from pathlib import Path


def build_manifest(spec: str, opts, ir, model_entry: dict, runner, parity: dict, fidelity: dict,
                   timings: dict, tmp: Path) -> dict:
    """manifest.json of a verified bundle whose files are in `tmp` (see README, Bundles)."""
    from layerwise.compiler.layers import blocks

    model_bytes = sum((tmp / f).stat().st_size for f in model_entry["files"])
    return {
        "spec": spec,
        "target": opts.target,
        "device": opts.device or "host",
        "modality": ir.meta["modality"],
        "task": ir.meta["task"],
        "notes": ir.meta["notes"],
        "model": model_entry,
        "inputs": fix_batch(ir.input_specs(), model_entry, ir),
        "outputs": fix_batch(ir.output_specs(), model_entry, ir),
        "example_inputs": "inputs.npz",
        "verification": {**parity, "against": "lifted IR", "runtime": runner.name},
        "fidelity": {**fidelity, "against": "original model (eager)"},
        "precision": opts.precision,
        "plan": {"passes": ir.annotations.get("passes", []),
                 "quantize": ir.annotations.get("quantize")},
        "layers": {
            "count": len(ir.layers),
            "blocks": [{"path": b.path, "params": b.params, "flops": b.flops}
                       for b in blocks(ir.layers)],
        },
        "sizes": {"model_bytes": model_bytes, "params": ir.params,
                  "flops": ir.flops},
        "timings": timings,
        "tool_versions": tool_versions(runner.name, runner.version),
        **device_ops(opts.device, model_entry),
        # the host's step after the model (a detector's NMS: runtime/detection.py)
        **({"postprocess": ir.meta["postprocess"]} if ir.meta.get("postprocess") else {}),
    }


# a full-integer model's input and output conversions run on the host by design
BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


def device_ops(device: str | None, model_entry: dict) -> dict:
    """{"device_ops": ...} when the device declares op limits and the artifact lists its ops
    (tflite): the ops outside them, which the device's compiler or delegate leaves to its
    host CPU (the Edge TPU compiler: that op and everything after it); else {}."""
    if not device or not model_entry.get("ops"):
        return {}
    from layerwise.devices import load_device

    limits = set(load_device(device).supported_ops)
    if not limits:
        return {}
    outside = sorted(set(model_entry["ops"]) - limits - BOUNDARY_OPS)
    return {"device_ops": {"device": device, "outside_op_limits": outside,
                           "counts": {op: model_entry["ops"][op] for op in outside}}}


def artifact_batch(model_entry: dict) -> int | None:
    """The batch a static artifact was emitted at when its target chose one (the model
    entry's `batch`, e.g. tflite transformers at 1); None: the example batch."""
    if model_entry.get("dynamic_batch", True):
        return None
    return model_entry.get("batch")


def fix_batch(specs: list[dict], model_entry: dict, ir) -> list[dict]:
    """Shapes as the artifact takes them: a target that could not keep the batch dynamic
    (model entry `dynamic_batch: false`) has its batch fixed (the entry's, else the example
    batch)."""
    if model_entry.get("dynamic_batch", True):
        return specs
    batch = artifact_batch(model_entry) or next(iter(ir.example_inputs.values())).shape[0]
    return [{**s, "shape": [batch if d == "batch" else d for d in s["shape"]]} for s in specs]


def tool_versions(runtime: str, version: str | None) -> dict:
    """The versions a manifest records: layerwise, torch, python, onnx and the runtime that
    verified the artifact."""
    import torch

    from layerwise.base import __version__

    out = {"layerwise": __version__, "torch": torch.__version__,
           "python": platform.python_version(), runtime: version}
    try:
        import onnx

        out["onnx"] = onnx.__version__
    except ImportError:
        pass
    return out
