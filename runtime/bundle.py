"""Read a bundle directory from its manifest alone; check every file's sha256 first."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerwise.errors import BundleError

MANIFEST = "manifest.json"
FORMAT = "layerwise-bundle/1"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Bundle:
    """An opened bundle: its directory and parsed manifest."""

    dir: Path
    manifest: dict[str, Any]

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def model_path(self) -> Path:
        return self.dir / self.manifest["model"]["file"]

    def example_inputs(self) -> dict[str, np.ndarray]:
        """The inputs the artifact was verified on (stored in the bundle)."""
        with np.load(self.dir / self.manifest["example_inputs"], allow_pickle=False) as z:
            return {spec["name"]: z[spec["name"]] for spec in self.manifest["inputs"]}

    def batch_dynamic(self) -> bool:
        return any(spec["shape"][:1] == ["batch"] for spec in self.manifest["inputs"])


def open_bundle(path: str | Path, check: bool = True) -> Bundle:
    """Parse DIR/manifest.json; with `check`, refuse a bundle whose files do not match it."""
    d = Path(path)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{d} is not a layerwise bundle (no {MANIFEST}); "
                          "create one with `layerwise compile`")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is corrupt ({e}); re-create the bundle") from e
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{d}: unknown bundle format {manifest.get('format')!r}")
    if check:
        for f in manifest.get("files", []):
            p = d / f["name"]
            if not p.is_file():
                raise BundleError(f"{d}: file {f['name']} is missing; re-create the bundle")
            if p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
                raise BundleError(f"{d}: file {f['name']} does not match its sha256 in the "
                                  "manifest (corrupt or truncated); re-create the bundle")
    return Bundle(d, manifest)
