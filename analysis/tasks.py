"""Task adapters: what "damage" and "loss" mean for a model's outputs, and the task metrics.

Each adapter gives three things, all on the first floating-point output unless said otherwise:

- `loss(outputs, reference, labels, gen)`: the scalar that gradient methods differentiate. With
  labels it is the task loss; without, the model's own predictive distribution stands in
  (labels sampled from its softmax for classification, a random Gaussian projection of the
  outputs otherwise), so squared gradients estimate the Fisher / Gauss-Newton of the output.
- `damage(outputs, reference, labels)`: per-sample harm of a change (higher = worse), for
  ablation-style measurements against the uncompressed model's outputs.
- `metrics(outputs, reference, labels)`: the task's figures on whole-data tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.plan.metrics import auc, f1_of_predictions


class TaskError(LayerwiseError):
    """An unknown task or labels that do not fit the task."""


def first_float(outputs: list[torch.Tensor]) -> torch.Tensor:
    for t in outputs:
        if t.is_floating_point():
            return t
    raise TaskError("the model returns no floating-point output to analyse; return logits, "
                    "scores or embeddings")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.float().reshape(t.shape[0], -1) if t.dim() else t.float().reshape(1, 1)


def projection_loss(outputs: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """sum_i <out_i, eps_i> over every float output, eps ~ N(0, 1): E[grad grad^T] = J^T J."""
    total = 0.0
    for t in outputs:
        if t.is_floating_point() and t.requires_grad:
            eps = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            total = total + (t * eps).sum()
    if not isinstance(total, torch.Tensor):
        raise TaskError("no model output depends on the parameters; nothing to differentiate")
    return total


def fidelity_damage(outputs, reference, labels=None) -> torch.Tensor:
    """1 - cosine between each sample's outputs and the reference's, averaged over outputs."""
    per = []
    for o, r in zip(outputs, reference):
        if o.is_floating_point() and o.dim() > 0 and o.shape == r.shape:
            per.append(1.0 - F.cosine_similarity(_flat(o), _flat(r), dim=1, eps=1e-12))
    if not per:
        raise TaskError("no floating-point output of the model matches the reference shape")
    return torch.stack(per).mean(0)


def _recall_at_k(out: torch.Tensor, ref: torch.Tensor, labels, k: int) -> float:
    """With labels: a same-label item among each query's k nearest outputs (self excluded).
    Without: the query's own reference embedding among its k nearest reference embeddings."""
    a = F.normalize(_flat(out), dim=1)
    if labels is not None:
        sim = a @ a.T
        sim.fill_diagonal_(-float("inf"))
        top = sim.topk(min(k, len(a) - 1), dim=1).indices
        lab = labels.reshape(-1)
        return float((lab[top] == lab[:, None]).any(1).float().mean())
    b = F.normalize(_flat(ref), dim=1)
    top = (a @ b.T).topk(min(k, len(a)), dim=1).indices
    return float((top == torch.arange(len(a))[:, None]).any(1).float().mean())


def _f1_macro(pred: torch.Tensor, y: torch.Tensor) -> float:
    return f1_of_predictions(pred.numpy(), y.numpy())


def _auc(score: torch.Tensor, y: torch.Tensor) -> float:
    """Rank-based ROC AUC of binary labels (nan without both classes)."""
    y = y.reshape(-1).bool().numpy()
    if y.all() or not y.any():
        return float("nan")
    return auc(score.reshape(-1).double().numpy(), y.astype(int))


def _ndcg_at_k(score: torch.Tensor, rel: torch.Tensor, k: int) -> float:
    score, rel = _flat(score), _flat(rel)
    k = min(k, score.shape[1])
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32))
    top = score.topk(k, dim=1).indices
    dcg = (rel.gather(1, top) * disc).sum(1)
    idcg = (rel.sort(dim=1, descending=True).values[:, :k] * disc).sum(1)
    return float((dcg / idcg.clamp(min=1e-12))[idcg > 0].mean())


# ------------------------------------------------------------------ adapters


@dataclass(frozen=True, slots=True)
class Task:
    """A task adapter (see the module docstring)."""

    name: str
    loss: Callable
    damage: Callable
    metrics: Callable
    needs_labels: bool = False
    summary: str = ""


def _fidelity_loss(outputs, reference, labels, gen):
    return projection_loss(outputs, gen)


def _fidelity_metrics(outputs, reference, labels=None) -> dict:
    return {"cosine_fidelity": float(1.0 - fidelity_damage(outputs, reference).mean())}


def _class_loss(outputs, reference, labels, gen):
    logits = first_float(outputs)
    if labels is None:  # true Fisher: labels drawn from the model's own prediction
        probs = logits.detach().float().reshape(-1, logits.shape[-1]).softmax(-1)
        labels = torch.multinomial(probs, 1, generator=gen).reshape(logits.shape[:-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(),
                           reduction="sum")


def _class_damage(outputs, reference, labels=None):
    o, r = first_float(outputs).float(), first_float(reference).float()
    o2, r2 = o.reshape(o.shape[0], -1, o.shape[-1]), r.reshape(r.shape[0], -1, r.shape[-1])
    if labels is None:  # KL(reference || output) per sample
        kl = F.kl_div(o2.log_softmax(-1), r2.log_softmax(-1), log_target=True, reduction="none")
        return kl.sum(-1).mean(-1)
    y = labels.reshape(o.shape[0], -1).long()
    ce_o = F.cross_entropy(o2.transpose(1, 2), y, reduction="none").mean(-1)
    ce_r = F.cross_entropy(r2.transpose(1, 2), y, reduction="none").mean(-1)
    return ce_o - ce_r


def _class_metrics(outputs, reference, labels=None) -> dict:
    o, r = first_float(outputs), first_float(reference)
    pred = o.argmax(-1).reshape(-1)
    out = {"agreement": float((pred == r.argmax(-1).reshape(-1)).float().mean())}
    if labels is not None:
        y = labels.reshape(-1).long()
        out.update(accuracy=float((pred == y).float().mean()), f1_macro=_f1_macro(pred, y))
    return out


def _embed_metrics(outputs, reference, labels=None, k: int = 5) -> dict:
    o, r = first_float(outputs), first_float(reference)
    return {"cosine_fidelity": float(1.0 - fidelity_damage([o], [r]).mean()),
            f"recall@{k}": _recall_at_k(o, r, labels, k)}


def _lm_targets(outputs, labels):
    logits = first_float(outputs)
    if labels is None:
        raise TaskError("language modelling needs token labels: pass labels=input_ids (the "
                        "adapter shifts them by one)")
    return logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1).long()


def _lm_loss(outputs, reference, labels, gen):
    if labels is None:
        return _class_loss(outputs, reference, None, gen)
    logits, y = _lm_targets(outputs, labels)
    return F.cross_entropy(logits, y, ignore_index=-100, reduction="sum")


def _lm_damage(outputs, reference, labels=None):
    if labels is None:
        return _class_damage(outputs, reference)
    o, r = first_float(outputs).float(), first_float(reference).float()
    y = labels[:, 1:].long()
    ce_o = F.cross_entropy(o[:, :-1].transpose(1, 2), y, ignore_index=-100, reduction="none")
    ce_r = F.cross_entropy(r[:, :-1].transpose(1, 2), y, ignore_index=-100, reduction="none")
    return (ce_o - ce_r).mean(-1)


def _lm_metrics(outputs, reference, labels=None) -> dict:
    if labels is None:
        return _class_metrics(outputs, reference)
    logits, y = _lm_targets(outputs, labels)
    ref, _ = _lm_targets(reference, labels)
    return {"perplexity": float(F.cross_entropy(logits, y, ignore_index=-100).exp()),
            "reference_perplexity": float(F.cross_entropy(ref, y, ignore_index=-100).exp())}


def _rec_loss(outputs, reference, labels, gen):
    if labels is None:
        return projection_loss(outputs, gen)
    s = first_float(outputs).float()
    return F.binary_cross_entropy_with_logits(s.reshape(labels.shape), labels.float(),
                                              reduction="sum")


def _rec_damage(outputs, reference, labels=None):
    if labels is None:
        return fidelity_damage(outputs, reference)
    s, r = first_float(outputs).float(), first_float(reference).float()
    y = labels.float().reshape(s.shape)
    lo = F.binary_cross_entropy_with_logits(s, y, reduction="none")
    lr = F.binary_cross_entropy_with_logits(r, y, reduction="none")
    return (lo - lr).reshape(s.shape[0], -1).mean(1)


def _rec_metrics(outputs, reference, labels=None, k: int = 10) -> dict:
    s, r = first_float(outputs), first_float(reference)
    out = {"cosine_fidelity": float(1.0 - fidelity_damage([s], [r]).mean())}
    if labels is not None:
        y = labels.reshape(s.shape)
        if s.dim() == 2 and s.shape[1] > 1:
            out[f"ndcg@{k}"] = _ndcg_at_k(s, y, k)
        out["auc"] = _auc(s, (y > 0).float())
    return out


TASKS: dict[str, Task] = {
    # no labels: keep the uncompressed model's own outputs
    "fidelity": Task("fidelity", _fidelity_loss, fidelity_damage, _fidelity_metrics,
                     summary="cosine fidelity to the uncompressed model's outputs"),
    "classification": Task("classification", _class_loss, _class_damage, _class_metrics,
                           summary="accuracy, macro F1; damage = CE increase (KL without labels)"),
    "embedding": Task("embedding", _fidelity_loss, fidelity_damage, _embed_metrics,
                      summary="cosine fidelity and recall@k of embeddings"),
    "retrieval": Task("retrieval", _fidelity_loss, fidelity_damage, _embed_metrics,
                      summary="recall@k (labels: item classes) and cosine fidelity"),
    "language-modeling": Task("language-modeling", _lm_loss, _lm_damage, _lm_metrics,
                              needs_labels=True, summary="perplexity of next-token prediction"),
    "recommendation": Task("recommendation", _rec_loss, _rec_damage, _rec_metrics,
                           summary="nDCG@k and AUC of item scores"),
}
_ALIASES = {"feature-extraction": "embedding", "sentence-similarity": "embedding",
            "lm": "language-modeling", "text-generation": "language-modeling",
            "image-classification": "classification", None: "fidelity"}


def get_task(name: str | None) -> Task:
    """The adapter for `name` (aliases: the IR's meta task names); None gives 'fidelity'."""
    key = _ALIASES.get(name, name)
    if key not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[key]
