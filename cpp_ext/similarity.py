"""Streaming similarity between representations: per-token cosine / angular distance, linear CKA.

Cosine runs natively in one pass over x and y (no products or normalised copies). CKA's work
is three Gram products, which BLAS already does near peak, so the accumulator calls BLAS
through NumPy rather than a hand-written C++ GEMM.
"""

from __future__ import annotations

import math

import numpy as np

from layerwise import cpp_ext
from layerwise.base.errors import LayerwiseError
from layerwise.cpp_ext.histogram import scan_range
from layerwise.cpp_ext.inputs import as_array, as_f32, layout, reject_nonfinite


def _token_layout(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None, axis: int,
                  what: str) -> tuple[tuple[int, int, int], np.ndarray | None]:
    if x.shape != y.shape:
        raise LayerwiseError(f"{what}: x {x.shape} and y {y.shape} must have the same shape")
    shape = layout(x.shape, axis, what)
    if mask is None:
        return shape, None
    flags = np.ascontiguousarray(np.asarray(mask), dtype=np.uint8).reshape(-1)
    if flags.size != shape[0] * shape[2]:
        raise LayerwiseError(f"{what}: mask has {flags.size} flags for {shape[0] * shape[2]} "
                             "tokens (x's shape without the feature axis)")
    return shape, flags


def cosine_sums_numpy(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None,
                      shape: tuple[int, int, int]) -> tuple[float, float, int, int, int]:
    """NumPy reference of the native `cosine_sums` over a (outer, features, inner) layout."""
    outer, features, inner = shape
    a = np.asarray(x, dtype=np.float64).reshape(outer, features, inner)
    b = np.asarray(y, dtype=np.float64).reshape(outer, features, inner)
    with np.errstate(all="ignore"):
        dot = np.einsum("ofi,ofi->oi", a, b).reshape(-1)
        xx = np.einsum("ofi,ofi->oi", a, a).reshape(-1)
        yy = np.einsum("ofi,ofi->oi", b, b).reshape(-1)
    use = np.ones(dot.size, dtype=bool) if mask is None else np.asarray(mask).reshape(-1) != 0
    finite = np.isfinite(dot) & np.isfinite(xx) & np.isfinite(yy)
    bad = int((use & ~finite).sum())
    zero = use & finite & ((xx == 0) | (yy == 0))
    ok = use & finite & ~zero
    cos = np.clip(dot[ok] / (np.sqrt(xx[ok]) * np.sqrt(yy[ok])), -1.0, 1.0)
    return (float(cos.sum()), float((np.arccos(cos) / math.pi).sum()), int(ok.sum()),
            int(zero.sum()), bad)


class CosineAccumulator:
    """Mean per-token cosine similarity and angular distance arccos(cos)/pi between a block's
    input x and output y, fed in batches. A token is one position of x with the feature axis
    `axis` taken out; `mask` (that shape, optional) selects the tokens that count. Tokens with a
    zero-norm x or y are skipped and counted in `zero`.
    """

    def __init__(self, axis: int = -1, name: str = "cosine") -> None:
        self.axis = axis
        self.name = name
        self.count = 0
        self.zero = 0
        self._cos = 0.0
        self._ang = 0.0

    def update(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> None:
        xa, ya = as_array(x, self.name), as_array(y, self.name)
        shape, flags = _token_layout(xa, ya, mask, self.axis, self.name)
        fx, fy = as_f32(xa), as_f32(ya)
        if cpp_ext.native is not None:
            sums = cpp_ext.native.cosine_sums(fx, fy, flags, *shape)
        else:
            cpp_ext.warn_if_missing()
            sums = cosine_sums_numpy(fx, fy, flags, shape)
        cos, ang, count, zero, bad = sums
        reject_nonfinite(bad, self.name)
        self._cos += cos
        self._ang += ang
        self.count += count
        self.zero += zero

    def _mean(self, total: float) -> float:
        if self.count == 0:
            raise LayerwiseError(f"{self.name}: no token counted yet (zero-norm: {self.zero})")
        return total / self.count

    @property
    def cosine(self) -> float:
        """Mean cosine similarity over counted tokens."""
        return self._mean(self._cos)

    @property
    def angular(self) -> float:
        """Mean angular distance arccos(cos)/pi over counted tokens, in [0, 1]."""
        return self._mean(self._ang)


def _rows(data: np.ndarray, what: str) -> np.ndarray:
    arr = as_array(data, what)
    if arr.ndim < 2:
        raise LayerwiseError(f"{what}: need (samples, features), got shape {arr.shape}")
    flat = as_f32(arr)
    reject_nonfinite(scan_range(flat)[2], what)
    return flat.reshape(-1, arr.shape[-1])


class CKAAccumulator:
    """Linear CKA (and linear HSIC) between features x (n, d1) and y (n, d2) streamed in batches
    of samples; rows pair up. Keeps three Gram matrices in float64 over data shifted by the first
    batch's mean, so centring at the end does not cancel catastrophically.
    """

    def __init__(self, name: str = "cka") -> None:
        self.name = name
        self.n = 0
        self._shift: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        xr, yr = _rows(x, self.name), _rows(y, self.name)
        if xr.shape[0] != yr.shape[0]:
            raise LayerwiseError(f"{self.name}: x has {xr.shape[0]} samples, y {yr.shape[0]}")
        if self._shift is None:
            self._shift = (xr.mean(axis=0), yr.mean(axis=0))
            d1, d2 = xr.shape[1], yr.shape[1]
            self._sx, self._sy = np.zeros(d1), np.zeros(d2)
            self._gxx, self._gyy = np.zeros((d1, d1)), np.zeros((d2, d2))
            self._gxy = np.zeros((d1, d2))
        elif (xr.shape[1], yr.shape[1]) != (self._sx.size, self._sy.size):
            before, now = (self._sx.size, self._sy.size), (xr.shape[1], yr.shape[1])
            raise LayerwiseError(f"{self.name}: feature sizes changed from {before} to {now}")
        xs, ys = xr - self._shift[0], yr - self._shift[1]
        self._sx += xs.sum(axis=0, dtype=np.float64)
        self._sy += ys.sum(axis=0, dtype=np.float64)
        self._gxx += xs.T @ xs
        self._gyy += ys.T @ ys
        self._gxy += xs.T @ ys
        self.n += xr.shape[0]

    def _centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.n < 2:
            raise LayerwiseError(f"{self.name}: need at least 2 samples, got {self.n}")
        n = float(self.n)
        cxx = self._gxx - np.outer(self._sx, self._sx) / n
        cyy = self._gyy - np.outer(self._sy, self._sy) / n
        cxy = self._gxy - np.outer(self._sx, self._sy) / n
        return cxx, cyy, cxy

    def hsic(self) -> float:
        """Biased linear HSIC: ||Xc^T Yc||_F^2 / (n - 1)^2."""
        cxy = self._centred()[2]
        return float(np.sum(cxy * cxy) / (self.n - 1) ** 2)

    def cka(self) -> float:
        """Linear CKA in [0, 1]; 0 when either side is constant."""
        cxx, cyy, cxy = self._centred()
        denom = math.sqrt(float(np.sum(cxx * cxx))) * math.sqrt(float(np.sum(cyy * cyy)))
        return float(np.sum(cxy * cxy)) / denom if denom > 0 else 0.0


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of features x (n, d1) and y (n, d2) in one call."""
    acc = CKAAccumulator(name="linear_cka")
    acc.update(x, y)
    return acc.cka()


def linear_cka_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook reference: centre in float64, ||Yc^T Xc||^2 / (||Xc^T Xc|| ||Yc^T Yc||)."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    a = a.reshape(-1, a.shape[-1])
    b = b.reshape(-1, b.shape[-1])
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(np.linalg.norm(b.T @ a) ** 2 / denom) if denom > 0 else 0.0
