"""Compare an artifact's outputs with reference outputs (numpy only)."""

from __future__ import annotations

import numpy as np


def compare(outputs: list[np.ndarray], references: list[np.ndarray],
            tolerance: float) -> dict:
    """Errors over all outputs together: rel_err = ||out - ref|| / ||ref||, max and p99 of
    |out - ref|; `passed` when rel_err <= tolerance and shapes match."""
    if len(outputs) != len(references):
        return {"passed": False, "reason": f"{len(outputs)} outputs, expected {len(references)}",
                "tolerance": tolerance}
    for o, r in zip(outputs, references):
        if tuple(o.shape) != tuple(r.shape):
            return {"passed": False, "reason": f"output shape {tuple(o.shape)}, expected "
                    f"{tuple(r.shape)}", "tolerance": tolerance}
    diff = np.concatenate([(np.asarray(o, np.float64) - np.asarray(r, np.float64)).ravel()
                           for o, r in zip(outputs, references)])
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in references])
    if not np.isfinite(diff).all():
        return {"passed": False, "reason": "outputs hold NaN or Inf", "tolerance": tolerance}
    denom = float(np.linalg.norm(ref))
    rel = float(np.linalg.norm(diff)) / denom if denom > 0 else float(np.linalg.norm(diff))
    return {
        "passed": bool(rel <= tolerance),
        "rel_err": rel,
        "max_abs_err": float(np.abs(diff).max()) if diff.size else 0.0,
        "abs_err_p99": float(np.quantile(np.abs(diff), 0.99)) if diff.size else 0.0,
        "tolerance": tolerance,
    }
