"""Run a bundle on inputs from an .npz file and write its outputs to another (no torch).

`read_npz` and `fit_arrays` also check the .npz data that `analyze` and `compile` read."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from layerwise.base.errors import LayerwiseError
from layerwise.runtime.bundle import open_bundle
from layerwise.runtime.profile import check_threads
from layerwise.runtime.session import open_runner


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


def _open_output(dst: Path) -> tuple[int, Path]:
    """A temporary file beside `dst` (renamed onto it once written), opened before any work:
    refuses an --output that is a directory or lies where no file can be created."""
    if dst.is_dir():
        raise LayerwiseError(f"--output {dst} is a directory; give a file path such as "
                             f"{dst / 'outputs.npz'}")
    above = next((p for p in dst.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise LayerwiseError(f"--output {dst}: {above} is a file, not a folder; choose "
                             "another path")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    except OSError as e:
        raise LayerwiseError(f"cannot write --output {dst} ({e.strerror or e}); choose a "
                             "writable place") from e
    return fd, Path(tmp)


def _written(dst: Path, write: Callable[[], object]) -> None:
    """Call `write`; an OSError (disk full, a folder gone) becomes a LayerwiseError."""
    try:
        write()
    except OSError as e:
        raise LayerwiseError(f"cannot write --output {dst} ({e.strerror or e}); choose a "
                             "writable place") from e


def run_bundle(path: str | Path, inputs: str | Path, output: str | Path,
               threads: int = 0, trust_native: bool = False) -> dict:
    """Feed the arrays of `inputs` (named as the manifest's inputs) to the bundle's model and
    save its outputs, named as the manifest's outputs, to `output` (written atomically).
    `trust_native`: load a native model library not compiled on this machine."""
    check_threads(threads)
    bundle = open_bundle(path)
    feeds = fit_arrays(inputs, read_npz(inputs), bundle.manifest["inputs"], who="the bundle")
    dst = Path(output)
    fd, tmp = _open_output(dst)
    try:
        with os.fdopen(fd, "wb") as f:
            runner = open_runner(bundle.target, bundle.model_path, threads=threads,
                                 trust_native=trust_native)
            outs = runner.run(feeds)
            names = [o["name"] for o in bundle.manifest["outputs"]]
            _written(dst, lambda: (np.savez(f, **dict(zip(names, outs))), f.flush()))
        _written(dst, lambda: os.replace(tmp, dst))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"bundle": str(bundle.dir), "output": str(dst),
            "outputs": [{"name": n, "shape": list(o.shape), "dtype": str(o.dtype)}
                        for n, o in zip(names, outs)]}
