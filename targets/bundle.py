"""Bundle directories, written atomically: build in a temp dir beside OUT, rename at the end.

An exception or Ctrl-C inside the `BundleWriter` block removes the temp dir, so a failed
compile leaves nothing behind; an existing OUT is refused unless `force` is set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import numpy as np

from layerwise.errors import BundleError
from layerwise.runtime.bundle import FORMAT, MANIFEST, sha256_file


class BundleWriter:
    """Context manager: `w.dir` is the temp dir to fill; `w.finish(manifest)` publishes it."""

    def __init__(self, out: str | Path, force: bool = False) -> None:
        self.out = Path(out)
        self.force = force
        self.dir: Path | None = None
        if self.out.exists() and not force:
            raise BundleError(f"{self.out} already exists: choose another --out or pass --force")
        if self.out.exists() and not self.out.is_dir():
            raise BundleError(f"{self.out} exists and is not a directory")

    def __enter__(self) -> Self:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> str:
        with open(self.dir / name, "wb") as f:
            np.savez(f, **arrays)
        return name

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Hash every file, write manifest.json, move the bundle into place; returns the
        manifest as written."""
        files = sorted(p for p in self.dir.rglob("*") if p.is_file())
        manifest = {"format": FORMAT, **manifest, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                            time.gmtime())}
        manifest["files"] = [
            {"name": str(p.relative_to(self.dir)), "bytes": p.stat().st_size,
             "sha256": sha256_file(p)} for p in files
        ]
        (self.dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_jsonable))
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            self.out.rename(old)
        os.rename(self.dir, self.out)
        self.dir = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
