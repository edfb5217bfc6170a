"""The cpp_ext kernels analysis uses (cosine sums, KSG mutual information), through cpp_ext's
own wrappers: the native kernel when built, its NumPy reference otherwise."""

from __future__ import annotations

import numpy as np

from layerwise import cpp_ext
from layerwise.cpp_ext.mutual_info import mutual_information_ksg
from layerwise.cpp_ext.similarity import cosine_sums_numpy

__all__ = ["cosine_sums", "mutual_information_ksg"]


def cosine_sums(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None
                ) -> tuple[float, float, int]:
    """(sum of cos, sum of arccos(cos)/pi, count) over the rows of two (N, D) arrays.

    Rows where either side has zero norm, or where `mask` is False, are not counted.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)
    m = None if mask is None else np.ascontiguousarray(mask.reshape(-1), dtype=np.uint8)
    if cpp_ext.native is not None:
        cos, ang, count, _zero, _bad = cpp_ext.native.cosine_sums(
            x.reshape(-1), y.reshape(-1), m, x.shape[0], x.shape[1], 1)
    else:
        cpp_ext.warn_if_missing()
        cos, ang, count, _zero, _bad = cosine_sums_numpy(x, y, m, (x.shape[0], x.shape[1], 1))
    return float(cos), float(ang), int(count)
