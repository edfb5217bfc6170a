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


def mask_agreement(outputs: dict[str, np.ndarray], references: dict[str, np.ndarray]) -> dict:
    """Segmentation masks (argmax over the class axis of `out`), artifact against reference:
    the share of pixels of the same class and the mean IoU over the classes either holds."""
    got = np.argmax(outputs["out"], axis=1)
    want = np.argmax(references["out"], axis=1)
    ious = [float(np.sum((got == c) & (want == c)) / np.sum((got == c) | (want == c)))
            for c in np.union1d(np.unique(got), np.unique(want))]
    return {"metric": "argmax masks of 'out'", "pixel_agreement": float(np.mean(got == want)),
            "mean_iou": float(np.mean(ious)) if ious else 1.0}


def _detections(meta: dict, outputs: dict, references: dict) -> dict | None:
    from layerwise.runtime.detection import agreement

    post = meta.get("postprocess")
    return agreement(post, outputs, references) if post else None


# task -> (the outputs it reads, its agreement figure)
TASK_AGREEMENT = {
    "detection": (("boxes", "scores"), _detections),
    "segmentation": (("out",), lambda _meta, out, ref: mask_agreement(out, ref)),
}


def task_agreement(meta: dict, names: list[str], outputs: list[np.ndarray],
                   references: list[np.ndarray]) -> dict | None:
    """The task's own figure of agreement (detections after host NMS, segmentation masks)
    for a model whose `meta` (IR meta or manifest) names such a task and whose outputs
    `names` hold what it reads; else None."""
    task = TASK_AGREEMENT.get(meta.get("task"))
    if task is None or not set(task[0]) <= set(names):
        return None
    return task[1](meta, dict(zip(names, outputs)), dict(zip(names, references)))
