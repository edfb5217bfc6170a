"""Targets room: one module per backend, each with `INFO` and `emit(ir, out_dir, opts)`.

Backends are imported only when used, so a missing SDK costs nothing until it is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerwise.errors import TargetError


@dataclass(frozen=True)
class TargetInfo:
    """What a backend declares: precisions, required legalization passes, its pip extra."""

    name: str
    runtime: str
    precisions: tuple[str, ...]
    extra: str | None
    legalize: tuple[str, ...] = ()


TARGETS: dict[str, str] = {
    "onnx": "layerwise.targets.onnx",
    "openvino": "layerwise.targets.openvino",
    "tflite": "layerwise.targets.tflite",
    "tensorrt": "layerwise.targets.tensorrt",
    "tvm": "layerwise.targets.tvm",
}


def get_target(name: str):
    """The target module for `name` (has INFO and emit)."""
    from layerwise.plugins import find

    return find("layerwise.targets", name, TARGETS, TargetError, "target")
