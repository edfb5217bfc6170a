"""Plugins: third-party packages add analysis methods, passes, targets and device profiles
through entry points (groups `layerwise.methods`, `layerwise.passes`, `layerwise.targets`,
`layerwise.devices`). Standard library only, so every room may use it."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

GROUPS = ("layerwise.methods", "layerwise.passes", "layerwise.targets", "layerwise.devices")


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
