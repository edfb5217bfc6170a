"""The host side of a dense detector (numpy only): score threshold, top-k and non-maximum
suppression over the `boxes` [B, N, 4] and `scores` [B, N, C] a detector bundle returns.

The parameters are the model's own, recorded in the manifest's `postprocess` (see
layerwise/sources/detection.py): `score_thresh`, `topk_candidates` (per class, or per feature
level over (anchor, class) pairs: `topk_scope`), `nms_thresh` (IoU above which a box of the
same label with a lower score is dropped) and `detections_per_img`. The steps and their
float32 arithmetic follow torchvision's own post-process, so a bundle's detections equal the
torchvision model's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layerwise.base.errors import BundleError

# parameters a postprocess must hold, with their types (a manifest is untrusted input)
PARAMS: dict[str, type | tuple[type, ...]] = {
    "score_thresh": (int, float), "nms_thresh": (int, float), "detections_per_img": int,
    "topk_candidates": int, "topk_scope": str, "first_label": int,
}
# pixels two empty boxes' corners may differ by and still count as the same box (IoU 1)
EMPTY_BOX_TOLERANCE = 0.01
# torchvision's batched_nms offsets boxes per label up to this many coordinates, then loops
_OFFSET_TRICK_MAX = 4000


def check_postprocess(post: Any) -> dict:
    """`post` if it is a dense-detection postprocess this module can run; else BundleError."""
    if not isinstance(post, dict) or post.get("kind") != "dense-detection":
        raise BundleError(f"unknown postprocess {post!r} in the manifest; re-create the "
                          "bundle with `layerwise compile`")
    for key, kind in PARAMS.items():
        if not isinstance(post.get(key), kind) or isinstance(post.get(key), bool):
            raise BundleError(f"the manifest's postprocess has no valid {key!r}; re-create "
                              "the bundle with `layerwise compile`")
    if post["topk_scope"] == "level" and not (
            isinstance(post.get("levels"), list)
            and all(isinstance(n, int) and n >= 0 for n in post["levels"])):
        raise BundleError("the manifest's postprocess has no valid 'levels'; re-create the "
                          "bundle with `layerwise compile`")
    return post


def detect(boxes: np.ndarray, scores: np.ndarray, post: dict) -> list[dict[str, np.ndarray]]:
    """Detections per image ({"boxes" [K, 4], "scores" [K], "labels" [K]}, best first) from
    one batch of dense outputs."""
    post = check_postprocess(post)
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    if boxes.ndim != 3 or scores.ndim != 3 or boxes.shape[:2] != scores.shape[:2]:
        raise BundleError(f"boxes {boxes.shape} and scores {scores.shape} are not [B, N, 4] "
                          "and [B, N, C] dense detector outputs")
    out = []
    for b, s in zip(boxes, scores):
        cb, cs, cl = _candidates(b, s, post)
        keep = batched_nms(cb, cs, cl, float(post["nms_thresh"]))[:post["detections_per_img"]]
        out.append({"boxes": cb[keep], "scores": cs[keep], "labels": cl[keep]})
    return out


def _topk(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (ties by position)."""
    return np.argsort(-values, kind="stable")[:k]


def _candidates(boxes: np.ndarray, scores: np.ndarray, post: dict):
    """Boxes above the score threshold, the best `topk_candidates` per class or level."""
    thresh, k = float(post["score_thresh"]), post["topk_candidates"]
    num_classes = scores.shape[1]
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if post["topk_scope"] == "class":
        for label in range(post["first_label"], num_classes):
            idx = np.flatnonzero(scores[:, label] > thresh)
            idx = idx[_topk(scores[idx, label], k)]
            parts.append((boxes[idx], scores[idx, label], np.full(len(idx), label, np.int64)))
    else:
        start = 0
        for n in post["levels"]:
            flat = scores[start:start + n].ravel()
            idx = np.flatnonzero(flat > thresh)
            idx = idx[_topk(flat[idx], k)]
            parts.append((boxes[start + idx // num_classes], flat[idx],
                          (idx % num_classes).astype(np.int64)))
            start += n
    if not parts:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return tuple(np.concatenate(p) for p in zip(*parts))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy non-maximum suppression (torchvision's kernel: float32 IoU, drop above the
    threshold); indices kept, best score first."""
    x1, y1, x2, y2 = (np.asarray(boxes[:, i], np.float32) for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    dropped = np.zeros(len(order), bool)
    keep = []
    for pos, i in enumerate(order):
        if dropped[pos]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        dropped[pos + 1:] |= iou.astype(np.float64) > iou_thresh
    return np.asarray(keep, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                iou_thresh: float) -> np.ndarray:
    """NMS within each label (torchvision.ops.batched_nms, including its choice between
    offsetting boxes per label and a loop over labels); indices, best score first."""
    if boxes.size == 0:
        return np.zeros(0, np.int64)
    if boxes.size <= _OFFSET_TRICK_MAX:
        offsets = labels.astype(np.float32) * (boxes.max() + np.float32(1))
        return nms(boxes + offsets[:, None], scores, iou_thresh)
    keep = np.zeros(len(boxes), bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        keep[idx[nms(boxes[idx], scores[idx], iou_thresh)]] = True
    idx = np.flatnonzero(keep)
    return idx[np.argsort(-scores[idx], kind="stable")]


def flat_detections(dets: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Detections of a batch as flat arrays for an .npz: `detections.boxes` [K, 4],
    `.scores`, `.labels` and `.image` (the batch index of each row)."""
    out = {f"detections.{k}": np.concatenate([d[k] for d in dets]) if dets else np.zeros(0)
           for k in ("boxes", "scores", "labels")}
    out["detections.image"] = np.concatenate(
        [np.full(len(d["scores"]), i, np.int64) for i, d in enumerate(dets)]
    ) if dets else np.zeros(0, np.int64)
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` [M, 4] with every box of `b` [N, 4] (xyxy) -> [M, N]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    # two empty boxes (a line or a point, from random weights) agree when their corners do
    same = np.abs(a[:, None, :] - b[None, :, :]).max(-1, initial=0.0) <= EMPTY_BOX_TOLERANCE
    return np.where(union > 0, inter / np.where(union > 0, union, 1), same.astype(float))


def match(want: dict[str, np.ndarray], got: dict[str, np.ndarray],
          min_iou: float = 0.5) -> list[float]:
    """Greedy matching of `got` detections to `want`'s (best score first, same label, the
    unused box of highest IoU, at least `min_iou`): the IoU of each matched pair."""
    if not len(want["labels"]) or not len(got["labels"]):
        return []
    iou = box_iou(want["boxes"], got["boxes"])
    iou[want["labels"][:, None] != got["labels"][None, :]] = -1.0
    used = np.zeros(len(got["labels"]), bool)
    pairs = []
    for i in np.argsort(-want["scores"], kind="stable"):
        row = np.where(used, -1.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= min_iou:
            used[j] = True
            pairs.append(float(row[j]))
    return pairs


def agreement(post: dict, outputs: dict[str, np.ndarray],
              references: dict[str, np.ndarray]) -> dict:
    """Detections after the host post-process, artifact against reference: `matched` (pairs
    of the same label with IoU >= 0.5, over the larger of the two counts; 1.0 when both find
    nothing), `box_iou` (mean IoU of the matched pairs), `agreement` (their product) and the
    counts."""
    got = detect(outputs["boxes"], outputs["scores"], post)
    want = detect(references["boxes"], references["scores"], post)
    pairs: list[float] = []
    most = 0
    for w, g in zip(want, got):
        pairs += match(w, g)
        most += max(len(w["labels"]), len(g["labels"]))
    matched = len(pairs) / most if most else 1.0
    box_iou = float(np.mean(pairs)) if pairs else (0.0 if most else 1.0)
    return {"metric": "detections after host NMS: same label, IoU >= 0.5",
            "agreement": matched * box_iou, "matched": matched, "box_iou": box_iou,
            "reference_detections": sum(len(w["labels"]) for w in want),
            "artifact_detections": sum(len(g["labels"]) for g in got)}


def host_outputs(manifest: dict, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the host adds to a bundle's named outputs: for a manifest with a `postprocess`,
    its detections (flat_detections); else nothing."""
    if "postprocess" not in manifest:
        return {}
    if "boxes" not in outputs or "scores" not in outputs:
        raise BundleError("the manifest has a detection postprocess but the model has no "
                          "'boxes' and 'scores' outputs; re-create the bundle with "
                          "`layerwise compile`")
    return flat_detections(detect(outputs["boxes"], outputs["scores"], manifest["postprocess"]))
