"""Run a bundle on inputs from an .npz file and write its outputs to another (no torch)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from layerwise.base.errors import LayerwiseError
from layerwise.runtime.arrays import fit_arrays, read_npz
from layerwise.runtime.bundle import open_bundle
from layerwise.runtime.detection import host_outputs
from layerwise.runtime.profile import check_threads
from layerwise.runtime.runners import open_runner


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
    save its outputs, named as the manifest's outputs, to `output` (written atomically); a
    detector's bundle adds its detections after host NMS (runtime/detection.py).
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
            arrays = dict(zip([o["name"] for o in bundle.manifest["outputs"]], outs))
            arrays.update(host_outputs(bundle.manifest, arrays))  # a detector's NMS
            _written(dst, lambda: (np.savez(f, **arrays), f.flush()))
        _written(dst, lambda: os.replace(tmp, dst))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"bundle": str(bundle.dir), "output": str(dst),
            "outputs": [{"name": n, "shape": list(o.shape), "dtype": str(o.dtype)}
                        for n, o in arrays.items()]}
