"""Label-free quality of a candidate's outputs against the original model's, and the split
of the data into an analysis/calibration part and a held-out part."""

from __future__ import annotations

import numpy as np

from layerwise.base.errors import LayerwiseError


def quality(outputs: list[np.ndarray], reference: list[np.ndarray], classify: bool) -> float:
    """Agreement of the top-1 class (classifiers) or mean cosine (else) with the reference."""
    o = np.asarray(outputs[0], np.float64).reshape(len(outputs[0]), -1)
    r = np.asarray(reference[0], np.float64).reshape(len(reference[0]), -1)
    if classify:
        return float((o.argmax(1) == r.argmax(1)).mean())
    num = (o * r).sum(1)
    den = np.linalg.norm(o, axis=1) * np.linalg.norm(r, axis=1)
    return float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))


def split(batches: list, holdout: float = 0.5) -> tuple[list, list]:
    """Alternate batches into (analysis/calibration, held-out) so both see every source."""
    if len(batches) < 2:
        raise LayerwiseError("the plan search needs at least 2 batches of data (one to analyse "
                             "and calibrate, one held out); pass more --data")
    step = max(2, round(1 / holdout))
    held = [b for i, b in enumerate(batches) if i % step == step - 1]
    return [b for i, b in enumerate(batches) if i % step != step - 1], held
