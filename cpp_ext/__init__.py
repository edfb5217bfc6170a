"""Native kernels for statistics hot loops, with NumPy references beside them.

Each public function or class here has a `*_numpy` reference in its module (histogram,
calibrate, mutual_info, similarity) computing the same result the slow, obvious way.
`native` is the compiled nanobind module, or None when it was not built (no compiler on the
machine); the public functions then use the NumPy path and warn once.
"""

from __future__ import annotations

import os
import warnings

# libgomp spins ~300k iterations at every barrier by default. When another process holds one
# of the two cores, the spinning thread keeps its partner off the CPU for a time slice at every
# parallel region, which slows the kernels many times over. Threads sleep instead,
# unless the user chose a policy. Read once, when the OpenMP runtime loads with `_native`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


from layerwise.cpp_ext.calibrate import (  # noqa: E402
    HISTOGRAM_METHODS,
    ClipRange,
    clip_range,
    entropy_range,
    kl_divergence,
    mse_range,
    percentile_range,
    quantization_mse,
)
from layerwise.cpp_ext.histogram import (  # noqa: E402
    DEFAULT_SATURATION,
    Histogram,
    StreamingHistogram,
    scan_range,
)
from layerwise.cpp_ext.mutual_info import mutual_information, mutual_information_ksg  # noqa: E402
from layerwise.cpp_ext.similarity import (  # noqa: E402
    CKAAccumulator,
    CosineAccumulator,
    linear_cka,
)

__all__ = [
    "DEFAULT_SATURATION",
    "HISTOGRAM_METHODS",
    "CKAAccumulator",
    "ClipRange",
    "CosineAccumulator",
    "Histogram",
    "StreamingHistogram",
    "clip_range",
    "entropy_range",
    "kl_divergence",
    "linear_cka",
    "mse_range",
    "mutual_information",
    "mutual_information_ksg",
    "native",
    "percentile_range",
    "quantization_mse",
    "scan_range",
    "warn_if_missing",
]
