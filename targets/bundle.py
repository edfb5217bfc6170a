"""Bundle directories, written atomically: build in a temp dir beside OUT, rename at the end.

An exception or Ctrl-C inside the `BundleWriter` block removes the temp dir, so a failed
compile leaves nothing behind; the temp dir of a compile killed outright is removed by the
next compile to the same OUT (see `layerwise.base.outdir`). An existing OUT is refused unless
`force` is set, and even then unless it is a bundle or an empty directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from layerwise.base.errors import BundleError
from layerwise.base.outdir import MARKER, AtomicDir
from layerwise.runtime.bundle import FORMAT, MANIFEST, sha256_file


def is_bundle(d: Path) -> bool:
    """Whether d holds a layerwise manifest.json (its format string names a bundle)."""
    m = d / MANIFEST
    try:
        manifest = json.loads(m.read_text()) if m.is_file() else None
    except (OSError, ValueError):
        return False
    family = FORMAT.rsplit("/", 1)[0] + "/"
    return isinstance(manifest, dict) and str(manifest.get("format", "")).startswith(family)


class BundleWriter(AtomicDir):
    """Context manager: `w.dir` is the temp dir to fill; `w.finish(manifest)` publishes it."""

    error = BundleError

    def __init__(self, out: str | Path, force: bool = False) -> None:
        super().__init__(out, force, is_bundle, "a layerwise bundle")

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> str:
        with open(self.dir / name, "wb") as f:
            np.savez(f, **arrays)
        return name

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Hash every file, write manifest.json, move the bundle into place; returns the
        manifest as written."""
        files = sorted(p for p in self.dir.rglob("*")
                       if p.is_file() and p != self.dir / MARKER)
        manifest = {"format": FORMAT, **manifest, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                            time.gmtime())}
        manifest["files"] = [
            {"name": str(p.relative_to(self.dir)), "bytes": p.stat().st_size,
             "sha256": sha256_file(p)} for p in files
        ]
        (self.dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_jsonable))
        self.publish()
        return manifest


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
