"""layerwise: lift a PyTorch model, measure its layers, compress, emit verified edge artifacts.

The public API (`inspect`, `compile`, `profile`) is imported lazily so that `import layerwise`
stays fast and works without torch (the runtime-only install on a device).
"""

from __future__ import annotations

from typing import Any

from layerwise.base import __version__

_API = {"analyze", "inspect", "compile", "profile", "load_source", "lift"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from layerwise import api

        return getattr(api, name)
    raise AttributeError(f"module 'layerwise' has no attribute {name!r}")


__all__ = ["__version__", "analyze", "compile", "inspect", "lift", "load_source", "profile"]
