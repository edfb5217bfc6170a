"""Plugins: third-party packages add analysis methods, passes, targets and device profiles
through entry points (groups `layerwise.methods`, `layerwise.passes`, `layerwise.targets`,
`layerwise.devices`). Standard library only, so every room may use it."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

GROUPS = ("layerwise.methods", "layerwise.passes", "layerwise.targets", "layerwise.devices")
# The built-in targets by name, the one list: targets/__init__ maps each to its module, device
# profiles name one of them (or a plugin's) as data.
TARGET_NAMES = ("onnx", "openvino", "tflite", "tensorrt", "tvm")


def plugins(group: str) -> dict[str, str]:
    """name -> 'module:attr' (or 'module') registered by installed packages under `group`."""
    return {ep.name: ep.value for ep in entry_points(group=group)}


def load(value: str):
    """The object an entry-point value names ('module:attr' or a module)."""
    module, _, attr = value.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def find(group: str, name: str, builtin: dict[str, str], error: type[Exception], what: str):
    """The object registered as `name`: built in (`builtin`: name -> 'module[:attr]') or by a
    plugin's entry point in `group`; unknown names raise `error` listing both."""
    table = builtin if name in builtin else {**plugins(group), **builtin}
    if name not in table:
        raise error(f"unknown {what} {name!r}; available: {', '.join(sorted(table))}")
    return load(table[name])
