"""Read a bundle directory from its manifest alone, as untrusted input.

A bundle may come from someone else (a build server, an upload to the device agent), so
before anything is loaded: the manifest must have the fields the runtime reads, with the
types it reads them as; every file it names must lie inside the bundle directory (no
absolute path, no `..`, no link anywhere in the bundle); the model file, its companions
(files beside it named `STEM.*`, which runtimes open implicitly) and the example inputs must
be listed in `files` with their size and sha256; and with `check`, every listed file must
match them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from layerwise.base.errors import BundleError, LayerwiseError

MANIFEST = "manifest.json"
FORMAT = "layerwise-bundle/1"
# Tensor dtypes a bundle's inputs and outputs may declare (numpy names).
DTYPES = frozenset({"float32", "float16", "float64", "bfloat16", "int8", "uint8", "int16",
                    "uint16", "int32", "uint32", "int64", "uint64", "bool"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Files a runtime opens beside the model without being told (OpenVINO's weights, the TVM
# runner's sidecar, ONNX external data as STEM.data or FILE.data): listed and hashed if there.
COMPANIONS = (".bin", ".json", ".data")
RECREATE = "re-create the bundle with `layerwise compile`"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Bundle:
    """An opened bundle: its directory and checked manifest."""

    dir: Path
    manifest: dict[str, Any]

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def model_path(self) -> Path:
        return self.dir / self.manifest["model"]["file"]

    def example_inputs(self) -> dict[str, np.ndarray]:
        """The inputs the artifact was verified on (stored in the bundle), checked against
        the manifest's inputs as `run` checks a user's."""
        from layerwise.runtime.arrays import fit_arrays

        name = self.manifest["example_inputs"]
        try:
            with np.load(self.dir / name, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            return fit_arrays(name, arrays, self.manifest["inputs"], who="the manifest")
        except (OSError, ValueError, EOFError, LayerwiseError) as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise BundleError(f"{self.dir.name}: {name} does not hold the inputs the manifest "
                              f"declares ({first}); {RECREATE}") from e

    def batch_dynamic(self) -> bool:
        return any(spec["shape"][:1] == ["batch"] for spec in self.manifest["inputs"])


def _fail(d: Path, what: str) -> BundleError:
    return BundleError(f"{d}: {what}; {RECREATE}")


def inside(d: Path, name: Any, what: str) -> str:
    """`name` if it is a plain relative path inside `d` (checked lexically and on disk)."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise _fail(d, f"{what} {name!r} is not a file name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or name.startswith("~"):
        raise _fail(d, f"{what} {name!r} points outside the bundle")
    root = d.resolve()
    p = (root / pure).resolve()
    if root not in p.parents:
        raise _fail(d, f"{what} {name!r} points outside the bundle")
    return str(pure)


def _check_tensors(d: Path, specs: Any, key: str) -> None:
    if not isinstance(specs, list) or not specs:
        raise _fail(d, f"the manifest has no {key} list")
    for s in specs:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and s["name"]):
            raise _fail(d, f"an entry of {key} has no name")
        if not isinstance(s.get("dtype"), str) or s["dtype"] not in DTYPES:
            raise _fail(d, f"{key[:-1]} {s['name']!r} has unknown dtype {s.get('dtype')!r} "
                        f"(one of {', '.join(sorted(DTYPES))})")
        shape = s.get("shape")
        if not isinstance(shape, list) or not all(
                (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
                or (isinstance(v, str) and _DIM_NAME.fullmatch(v)) for v in shape):
            raise _fail(d, f"{key[:-1]} {s['name']!r} has shape {shape!r}; a shape is a list "
                        "of sizes >= 0 and dimension names")


def check_manifest(d: Path, manifest: Any) -> dict[str, dict]:
    """Refuse a manifest without the fields the runtime reads; returns the listed files by
    name. Assumes nothing about where it came from."""
    if not isinstance(manifest, dict):
        raise _fail(d, f"{MANIFEST} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise _fail(d, f"unknown bundle format {manifest.get('format')!r} (expected {FORMAT})")
    if not isinstance(manifest.get("target"), str):
        raise _fail(d, "the manifest names no target")
    files = manifest.get("files")
    if not isinstance(files, list):
        raise _fail(d, "the manifest has no files list")
    listed: dict[str, dict] = {}
    for f in files:
        if not isinstance(f, dict):
            raise _fail(d, "an entry of files is not an object")
        name = inside(d, f.get("name"), "file")
        if name == MANIFEST or name in listed:
            raise _fail(d, f"file {name!r} is listed twice or is the manifest")
        size, digest = f.get("bytes"), f.get("sha256")
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0
                and isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise _fail(d, f"file {name!r} has no size and sha256 in the manifest")
        listed[name] = f
    model = manifest.get("model")
    if not isinstance(model, dict):
        raise _fail(d, "the manifest names no model file")
    names = [("model file", model.get("file")), ("example inputs", manifest.get(
        "example_inputs"))]
    extra = model.get("files") or []
    if not isinstance(extra, list):
        raise _fail(d, "the manifest's model files are not a list")
    names += [("model file", n) for n in extra]
    for what, name in names:
        if inside(d, name, what) not in listed:
            raise _fail(d, f"{what} {name!r} is not listed with its sha256 in files")
    _check_tensors(d, manifest.get("inputs"), "inputs")
    _check_tensors(d, manifest.get("outputs"), "outputs")
    return listed


def _no_links(d: Path) -> None:
    for top, dirs, files in os.walk(d, followlinks=False):
        for n in dirs + files:
            if os.path.islink(os.path.join(top, n)):
                rel = os.path.relpath(os.path.join(top, n), d)
                raise _fail(d, f"{rel} is a symbolic link; a bundle holds plain files only")


def open_bundle(path: str | Path, check: bool = True) -> Bundle:
    """Parse DIR/manifest.json and refuse what the module docstring lists; with `check`, also
    a listed file that is missing or does not match its size and sha256."""
    d = Path(path)
    mpath = d / MANIFEST
    if not d.is_dir() or not mpath.is_file() or mpath.is_symlink():
        raise BundleError(f"{d} is not a layerwise bundle (no {MANIFEST}); "
                          "create one with `layerwise compile`")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is corrupt ({e}); {RECREATE}") from e
    except RecursionError as e:
        raise BundleError(f"{mpath} is nested too deeply to be a manifest; {RECREATE}") from e
    _no_links(d)
    listed = check_manifest(d, manifest)
    model = PurePosixPath(manifest["model"]["file"])
    for rel in {str(model.with_suffix(s)) for s in COMPANIONS} | {f"{model}.data"}:
        if (d / rel).exists() and rel not in listed:
            raise _fail(d, f"{rel} sits beside the model but is not listed in files")
    if check:
        for name, f in listed.items():
            p = d / name
            if not p.is_file():
                raise BundleError(f"{d}: file {name} is missing; {RECREATE}")
            if p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
                raise BundleError(f"{d}: file {name} does not match its sha256 in the "
                                  f"manifest (corrupt or truncated); {RECREATE}")
    return Bundle(d, manifest)
