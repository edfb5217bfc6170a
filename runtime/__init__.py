"""Runtime room: load, run and profile a bundle with the backend's own runtime.

Imports numpy and the backend runtimes only, never torch: it must install on a device.
"""

from layerwise.runtime.bundle import Bundle, open_bundle
from layerwise.runtime.compare import compare
from layerwise.runtime.profile import profile
from layerwise.runtime.runners import open_runner

__all__ = ["Bundle", "compare", "open_bundle", "open_runner", "profile"]
