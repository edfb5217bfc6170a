"""Task metrics on labelled data, the way the user judges a model: plain numpy on a model's
first output and the labels (integer classes), higher is better, in [0, 1].

- `accuracy`, `macro_f1`: the output is class scores (argmax is the prediction);
- `centroid_accuracy`: the output is an embedding; each example is assigned the class whose
  centroid (mean of the other examples' embeddings of that class, leave-one-out, cosine) is
  nearest — an embedding model's accuracy without training a probe.
"""

from __future__ import annotations

import numpy as np

from layerwise.base.errors import LayerwiseError


def _flat(outputs: np.ndarray) -> np.ndarray:
    o = np.asarray(outputs, np.float64)
    return o.reshape(len(o), -1)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Share of examples whose top-scoring class is the label."""
    return float((_flat(outputs).argmax(1) == np.asarray(labels)).mean())


def macro_f1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """F1 averaged over the classes present in the labels or the predictions."""
    pred, y = _flat(outputs).argmax(1), np.asarray(labels)
    scores = []
    for c in np.union1d(pred, y):
        tp = float(np.sum((pred == c) & (y == c)))
        fp, fn = float(np.sum((pred == c) & (y != c))), float(np.sum((pred != c) & (y == c)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return float(np.mean(scores))


def centroid_accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out nearest-centroid accuracy of the embeddings (cosine)."""
    e = _flat(outputs)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    y = np.asarray(labels)
    classes = np.unique(y)
    if len(classes) < 2:
        raise LayerwiseError("centroid_accuracy needs labelled examples of at least 2 classes")
    sums = np.stack([e[y == c].sum(0) for c in classes])
    counts = np.array([np.sum(y == c) for c in classes], np.float64)
    own = np.searchsorted(classes, y)
    sims = np.empty((len(e), len(classes)))
    for k in range(len(classes)):
        s = sums[k] - np.where((own == k)[:, None], e, 0.0)  # leave the example out
        n = counts[k] - (own == k)
        c = s / np.maximum(n, 1)[:, None]
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        sims[:, k] = np.where(n > 0, (e * c).sum(1), -np.inf)
    return float((sims.argmax(1) == own).mean())


METRICS = {"accuracy": accuracy, "macro_f1": macro_f1, "centroid_accuracy": centroid_accuracy}


def default_metric(classify: bool) -> str:
    """accuracy for a classifier's scores, centroid_accuracy for anything else."""
    return "accuracy" if classify else "centroid_accuracy"
