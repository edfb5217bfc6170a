"""A static-batch artifact fed a larger multiple of its batch (held-out data, a bundle's
example inputs at another batch): slices of its batch run one after another and the outputs
are concatenated, so a model fixed at batch 1 still answers a batch of 8."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from layerwise.base.errors import BundleError


def slice_step(feeds: dict[str, np.ndarray], shapes: dict[str, tuple]) -> int | None:
    """The static batch b when every input's shape (`shapes`: name -> the artifact's shape,
    ints where fixed) leads with the same int b and every feed has k * b rows (k > 1) and the
    artifact's other axes; else None (the runtime decides: resize, or refuse)."""
    lead = {s[0] for s in shapes.values() if s}
    if len(lead) != 1 or not isinstance(b := next(iter(lead)), int) or b < 1:
        return None
    rows = set()
    for name, want in shapes.items():
        got = np.shape(feeds[name])
        if len(got) != len(want) or any(isinstance(w, int) and w != g
                                        for w, g in zip(want[1:], got[1:])):
            return None
        rows.add(got[0] if got else None)
    n = rows.pop() if len(rows) == 1 else None
    return b if n is not None and n > b and n % b == 0 else None


def run_in_slices(run: Callable[[dict], list[np.ndarray]], feeds: dict[str, np.ndarray],
                  step: int) -> list[np.ndarray]:
    """run() on each `step` rows of the feeds; its outputs concatenated along axis 0 (each
    must lead with `step` rows: a batch-major model)."""
    n = len(next(iter(feeds.values())))
    parts = [run({k: v[i:i + step] for k, v in feeds.items()}) for i in range(0, n, step)]
    if any(np.ndim(o) == 0 or np.shape(o)[0] != step for o in parts[0]):
        raise BundleError(f"this model is fixed at batch {step} and its outputs do not lead "
                          f"with the batch; feed it {step} rows at a time")
    return [np.concatenate(outs) for outs in zip(*parts)]
