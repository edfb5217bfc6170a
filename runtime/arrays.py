"""Named input arrays checked against declared input specs (numpy only): the .npz a user
gives `run` or `--data`, and the example inputs a bundle carries."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from layerwise.base.errors import LayerwiseError


def read_npz(path: str | Path, option: str = "--input") -> dict[str, np.ndarray]:
    """Every array of the .npz at `path`; a LayerwiseError naming `option` if it cannot be
    read as one (missing, a single .npy array, not a zip of arrays, pickled objects)."""
    src = Path(path)
    if not src.is_file():
        raise LayerwiseError(f"{option} {src} does not exist")
    how = "save it with np.savez(path, NAME=array, ...)"
    if not zipfile.is_zipfile(src):
        with open(src, "rb") as f:
            single = f.read(6) == b"\x93NUMPY"
        what = "a single .npy array" if single else "not an .npz (zip) file"
        raise LayerwiseError(f"{option} {src} is {what}: {how}")
    try:
        with np.load(src, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise LayerwiseError(f"{option} {src} is not a readable .npz file ({first}); "
                             f"{how}") from e
    odd = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if odd:
        raise LayerwiseError(f"{option} {src}: members {odd} are not .npy arrays; {how}")
    return arrays


_KINDS = {"U": "strings", "S": "bytes", "O": "Python objects", "c": "complex numbers",
          "V": "records", "M": "dates", "m": "time deltas"}


def fit_arrays(src: str | Path, arrays: dict[str, np.ndarray], specs: list[dict],
               allowed: tuple[str, ...] = (), who: str = "the model") -> dict[str, np.ndarray]:
    """The arrays named by `specs` ({name, dtype, shape}; a str dim is dynamic, and inputs
    sharing one must agree on its size), cast to each spec's dtype. Refuses a missing or extra
    array (`allowed` names may be present too), a dtype that does not cast within its kind
    (strings, complex into real, float into int) and a wrong shape."""
    names = [s["name"] for s in specs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise LayerwiseError(f"{src} lacks arrays for inputs {missing}; it has {sorted(arrays)}")
    extra = sorted(k for k in arrays if k not in names and k not in allowed)
    if extra:
        takes = names + [f"{a} (optional)" for a in allowed]
        raise LayerwiseError(f"{src} has arrays {extra} that {who} does not take; it takes "
                             f"{takes}: rename or remove them")
    out, seen = {}, {}
    for spec in specs:
        name, want = spec["name"], spec["shape"]
        arr = arrays[name]
        dtype = np.dtype(spec["dtype"])
        if arr.dtype.kind not in "biuf" or not np.can_cast(arr.dtype, dtype, "same_kind"):
            held = _KINDS.get(arr.dtype.kind, "values")
            raise LayerwiseError(f"{src}: input {name!r} holds {held} ({arr.dtype}); {who} expects "
                                 f"{dtype}: save it as {dtype} (array.astype('{dtype}'))")
        got = list(arr.shape)
        if arr.size == 0:
            raise LayerwiseError(f"{src}: input {name!r} is empty (shape {got}); give at least "
                                 "one example")
        if len(got) != len(want) or any(isinstance(w, int) and w != g
                                        for w, g in zip(want, got)):
            named = any(isinstance(w, str) for w in want)
            anysize = " (a named dim takes any size)" if named else ""
            shown = "[" + ", ".join(str(w) for w in want) + "]"
            raise LayerwiseError(f"{src}: input {name!r} has shape {got}; {who} expects "
                                 f"{shown}{anysize}")
        for w, g in zip(want, got):
            if isinstance(w, str) and seen.setdefault(w, (name, g))[1] != g:
                other = seen[w][0]
                raise LayerwiseError(f"{src}: inputs {other!r} and {name!r} must agree on "
                                     f"dim {w!r}, but have {seen[w][1]} and {g}")
        out[name] = arr.astype(dtype, copy=False)
    return out
