"""Compare an artifact's outputs with reference outputs (numpy only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    pixels = float(np.mean(got == want))
    return {"metric": "argmax masks of 'out'", "agreement": pixels, "pixel_agreement": pixels,
            "mean_iou": float(np.mean(ious)) if ious else 1.0}


def _detections(meta: dict, outputs: dict, references: dict) -> dict:
    from layerwise.runtime.detection import agreement

    return agreement(meta["postprocess"], outputs, references)


@dataclass(frozen=True)
class Agreement:
    """A task's own figure of agreement for one model: call it with (outputs, references),
    lists in the order of `names`; it returns a dict with an overall `agreement` in [0, 1]."""

    description: str
    names: tuple[str, ...]
    meta: dict
    figure: Callable[[dict, dict, dict], dict]

    def __call__(self, outputs: list[np.ndarray], references: list[np.ndarray]) -> dict:
        return self.figure(self.meta, dict(zip(self.names, outputs)),
                           dict(zip(self.names, references)))


# task -> (the outputs it reads, its figure, what its overall agreement is)
TASK_AGREEMENT = {
    "detection": (("boxes", "scores"), _detections,
                  "detections matched after host NMS x their mean box IoU"),
    "segmentation": (("out",), lambda _meta, out, ref: mask_agreement(out, ref),
                     "pixel agreement of the argmax masks"),
}


def agreement_for(meta: dict, names: list[str]) -> Agreement | None:
    """The task's own figure of agreement (detections after host NMS, segmentation masks)
    for a model whose `meta` (IR meta or manifest) names such a task and whose outputs
    `names` hold what it reads; else None."""
    task = TASK_AGREEMENT.get(meta.get("task"))
    if task is None or not set(task[0]) <= set(names):
        return None
    if meta.get("task") == "detection" and not meta.get("postprocess"):
        return None
    return Agreement(task[2], tuple(names), meta, task[1])


def task_agreement(meta: dict, names: list[str], outputs: list[np.ndarray],
                   references: list[np.ndarray]) -> dict | None:
    """agreement_for(meta, names)(outputs, references), or None when the task has none."""
    figure = agreement_for(meta, names)
    return figure(outputs, references) if figure else None
