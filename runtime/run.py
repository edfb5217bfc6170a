"""Run a bundle on inputs from an .npz file and write its outputs to another (no torch)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from layerwise.errors import LayerwiseError
from layerwise.runtime.bundle import open_bundle
from layerwise.runtime.session import open_runner


def run_bundle(path: str | Path, inputs: str | Path, output: str | Path,
               threads: int = 0) -> dict:
    """Feed the arrays of `inputs` (named as the manifest's inputs) to the bundle's model and
    save its outputs, named as the manifest's outputs, to `output` (written atomically)."""
    bundle = open_bundle(path)
    src = Path(inputs)
    if not src.is_file():
        raise LayerwiseError(f"input file {src} does not exist")
    try:
        with np.load(src, allow_pickle=False) as z:
            feeds = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise LayerwiseError(f"{src} is not a readable .npz file ({e})") from e
    for spec in bundle.manifest["inputs"]:
        name = spec["name"]
        if name not in feeds:
            raise LayerwiseError(f"{src} lacks input {name!r}; the bundle takes "
                                 f"{[s['name'] for s in bundle.manifest['inputs']]}")
        want = [d for d in spec["shape"]]
        got = list(feeds[name].shape)
        if len(got) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, got)):
            raise LayerwiseError(f"input {name!r} has shape {got}; the bundle expects {want}")
        feeds[name] = feeds[name].astype(spec["dtype"], copy=False)
    runner = open_runner(bundle.target, bundle.model_path, threads=threads)
    outs = runner.run(feeds)
    names = [o["name"] for o in bundle.manifest["outputs"]]
    dst = Path(output)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **dict(zip(names, outs)))
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"bundle": str(bundle.dir), "output": str(dst),
            "outputs": [{"name": n, "shape": list(o.shape), "dtype": str(o.dtype)}
                        for n, o in zip(names, outs)]}
