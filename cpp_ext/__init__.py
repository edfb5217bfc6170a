"""Native kernels for statistics hot loops, with NumPy references beside them.

`native` is the compiled nanobind module, or None when it was not built (no compiler on the
machine); the public functions then use the NumPy path and warn once.
"""

from __future__ import annotations

import warnings

try:
    from layerwise.cpp_ext import _native as native
except ImportError:  # pragma: no cover - exercised only on machines without the build
    native = None

_warned = False


def warn_if_missing() -> None:
    """Warn once that the NumPy path is in use and how to build the fast one."""
    global _warned
    if native is None and not _warned:
        _warned = True
        warnings.warn(
            "layerwise native kernels are not built; using the slower NumPy path. "
            "Install a C++ compiler and CMake, then `pip install --no-build-isolation -e .`",
            RuntimeWarning,
            stacklevel=3,
        )


from layerwise.cpp_ext.histogram import StreamingHistogram, scan_range  # noqa: E402

__all__ = ["StreamingHistogram", "native", "scan_range", "warn_if_missing"]
