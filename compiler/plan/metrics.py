"""Task metrics on labelled data, the way the user judges a model: plain numpy on a model's
first output and the labels. Higher is better unless the function says `lower_is_better`.

- `accuracy`, `macro_f1`: the output is class scores (argmax is the prediction);
- `centroid_accuracy`: the output is an embedding; each example is assigned the class whose
  centroid (mean of the other examples' embeddings of that class, leave-one-out, cosine) is
  nearest — an embedding model's accuracy without training a probe;
- `linear_probe`: the output is an embedding; accuracy of a ridge classifier trained on the
  other folds (5-fold cross-validation, folds by index);
- `recall@K` (retrieval): the output is an embedding; share of examples with an example of
  their own label among their K nearest others (cosine);
- `ndcg@K`, `auc` (recommendation): per-row scores over candidate items with the label the
  relevant item, or one score per example with a graded (auc: 0/1) relevance label;
- `perplexity` (language models): the output is next-token logits [N, T, V], the labels the
  token ids [N, T] (negative: ignored); lower is better.
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
    return f1_of_predictions(_flat(outputs).argmax(1), labels)


def f1_of_predictions(pred: np.ndarray, labels: np.ndarray) -> float:
    """Macro F1 of predicted classes against the labels."""
    pred, y = np.asarray(pred).reshape(-1), np.asarray(labels).reshape(-1)
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


def linear_probe(outputs: np.ndarray, labels: np.ndarray, folds: int = 5,
                 ridge: float = 1.0) -> float:
    """Cross-validated accuracy of a ridge classifier (one-hot targets) on the embeddings,
    standardised on each training fold."""
    e, y = _flat(outputs), np.asarray(labels)
    classes = np.unique(y)
    if len(classes) < 2 or len(y) < 2 * folds:
        raise LayerwiseError(f"linear_probe needs at least 2 classes and {2 * folds} labelled "
                             "examples")
    fold = np.arange(len(y)) % folds
    right = 0
    for k in range(folds):
        tr, te = fold != k, fold == k
        mu, sd = e[tr].mean(0), e[tr].std(0) + 1e-6
        x = np.hstack([(e[tr] - mu) / sd, np.ones((tr.sum(), 1))])
        t = (y[tr][:, None] == classes[None, :]).astype(np.float64)
        w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ t)
        xt = np.hstack([(e[te] - mu) / sd, np.ones((te.sum(), 1))])
        right += int((classes[(xt @ w).argmax(1)] == y[te]).sum())
    return right / len(y)


def recall_at(k: int):
    """recall@k of embeddings: a hit when one of the k nearest others shares the label."""
    def recall(outputs: np.ndarray, labels: np.ndarray) -> float:
        y = np.asarray(labels)
        sims = _cosines(outputs)
        top = np.argsort(-sims, axis=1)[:, :k]
        has_pair = np.array([np.sum(y == c) > 1 for c in y])
        if not has_pair.any():
            raise LayerwiseError(f"recall@{k} needs at least two examples of some label")
        hits = (y[top] == y[:, None]).any(1)
        return float(hits[has_pair].mean())

    recall.__name__ = f"recall@{k}"
    return recall


def ndcg_at(k: int):
    """NDCG@k: rows of scores over items with the label the relevant item, or one score per
    example with graded relevance labels (one ranked list)."""
    def ndcg(outputs: np.ndarray, labels: np.ndarray) -> float:
        o, y = _flat(outputs), np.asarray(labels)
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        if o.shape[1] > 1:  # rank of the relevant item in each row
            rank = (o > o[np.arange(len(y)), y][:, None]).sum(1)
            return float(np.where(rank < k, 1.0 / np.log2(rank + 2), 0.0).mean())
        rel = y.astype(np.float64)[np.argsort(-o[:, 0], kind="stable")][:k]
        ideal = np.sort(y.astype(np.float64))[::-1][:k]
        best = float(((2 ** ideal - 1) * disc[:len(ideal)]).sum())
        return float(((2 ** rel - 1) * disc[:len(rel)]).sum()) / best if best > 0 else 0.0

    ndcg.__name__ = f"ndcg@{k}"
    return ndcg


def auc(outputs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of one score per example (two columns: the second minus the first) against
    0/1 labels, ties counted half (Mann-Whitney)."""
    o, y = _flat(outputs), np.asarray(labels)
    score = o[:, 1] - o[:, 0] if o.shape[1] == 2 else o[:, -1]
    pos, neg = score[y == 1], score[y == 0]
    if not len(pos) or not len(neg):
        raise LayerwiseError("auc needs labels of both 0 and 1")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(allv))
    r[order] = ranks
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def perplexity(outputs: np.ndarray, labels: np.ndarray) -> float:
    """exp of the mean next-token cross-entropy: logits[:, t] predict labels[:, t + 1]."""
    return _pool_perplexity(*token_nll(outputs, labels))


def token_nll(outputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per example: the summed next-token negative log-likelihood and the tokens counted."""
    logits = np.asarray(outputs, np.float32)
    y = np.asarray(labels)
    if logits.ndim != 3 or y.shape != logits.shape[:2]:
        raise LayerwiseError(f"perplexity needs logits [N, T, V] and token labels [N, T]; got "
                             f"{logits.shape} and {y.shape}")
    if y.max(initial=0) >= logits.shape[-1]:
        raise LayerwiseError(f"perplexity: token ids reach {int(y.max())} but the output has "
                             f"{logits.shape[-1]} values per token: it needs the model's "
                             "next-token logits (a model with its LM head), not hidden states")
    tgt = y[:, 1:]
    keep = tgt >= 0
    nll, count = np.zeros(len(y)), keep.sum(1).astype(np.float64)
    for i in range(len(y)):  # one example at a time: [T, V] in float64 at most
        lg = logits[i, :-1].astype(np.float64)
        m = lg.max(-1, keepdims=True)
        logz = (m + np.log(np.exp(lg - m).sum(-1, keepdims=True)))[:, 0]
        picked = np.take_along_axis(lg, np.where(keep[i], tgt[i], 0)[:, None], -1)[:, 0]
        nll[i] = float((logz - picked)[keep[i]].sum())
    return nll, count


def _pool_perplexity(nll: np.ndarray, count: np.ndarray) -> float:
    if count.sum() <= 0:
        raise LayerwiseError("perplexity: no token to predict (all labels are negative)")
    return float(np.exp(nll.sum() / count.sum()))


perplexity.lower_is_better = True
perplexity.token_labels = True  # labels are the inputs' token ids when --eval has none
# per-example parts and how they pool: a bootstrap resamples the parts, not the logits
perplexity.parts, perplexity.pool = token_nll, _pool_perplexity


def _cosines(outputs: np.ndarray) -> np.ndarray:
    e = _flat(outputs)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    return sims


METRICS = {"accuracy": accuracy, "macro_f1": macro_f1, "centroid_accuracy": centroid_accuracy,
           "linear_probe": linear_probe, "auc": auc, "perplexity": perplexity}
PARAMETRIC = {"recall": recall_at, "ndcg": ndcg_at}  # NAME@K


def metric(name: str):
    """The built-in metric `name` (NAME@K for the parametric ones), or None."""
    if name in METRICS:
        return METRICS[name]
    base, _, k = name.partition("@")
    if base in PARAMETRIC and k.isdigit() and int(k) > 0:
        return PARAMETRIC[base](int(k))
    return None


def default_metric(classify: bool) -> str:
    """accuracy for a classifier's scores, centroid_accuracy for anything else."""
    return "accuracy" if classify else "centroid_accuracy"
