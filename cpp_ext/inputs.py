"""Input rules shared by every kernel: one explicit float32 conversion, a (outer, C, inner) view.

Kernels read contiguous float32 only. Anything else (float64, float16, ints, torch CPU tensors,
strided views) is converted here, once, so the cost is visible in one place.
"""

from __future__ import annotations

import numpy as np

from layerwise.base.errors import LayerwiseError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_f32(data: np.ndarray) -> np.ndarray:
    """Flat contiguous float32 view or copy of `data` (one explicit conversion)."""
    return np.ascontiguousarray(np.asarray(data), dtype=np.float32).reshape(-1)


def as_array(data: np.ndarray, what: str) -> np.ndarray:
    """`data` as an ndarray that is not empty; raises naming `what` otherwise."""
    arr = np.asarray(data)
    if arr.size == 0:
        raise LayerwiseError(f"{what}: got an empty tensor; pass at least one value")
    return arr


def layout(shape: tuple[int, ...], axis: int | None, what: str) -> tuple[int, int, int]:
    """(outer, channels, inner) of a C-order tensor with its channel axis at `axis`.

    axis=None views the whole tensor as one channel.
    """
    if axis is None:
        return 1, 1, int(np.prod(shape, dtype=np.int64))
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        raise LayerwiseError(f"{what}: axis {axis} is out of range for a {ndim}-d tensor {shape}")
    axis %= ndim
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    return outer, int(shape[axis]), inner


def reject_nonfinite(count: int, what: str) -> None:
    """Raise when `count` NaN/Inf values were found in the input of `what`."""
    if count:
        raise LayerwiseError(
            f"{what}: input holds {count} NaN/Inf values; statistics over them are meaningless. "
            "Fix the model or its input (e.g. check for overflow in float16)."
        )


def saturation_f32(saturation: float) -> float:
    """The saturation bound as the kernels compare it: rounded to float32, +inf past its max."""
    if saturation <= 0:
        raise LayerwiseError(f"saturation must be > 0, got {saturation}")
    if saturation > FLOAT32_MAX:
        return float("inf")
    return float(np.float32(saturation))
