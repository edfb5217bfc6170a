"""How the plan search judges a candidate: label-free fidelity to the original model on the
held-out split of --data (the default), or the user's task metric on labelled --eval data.

A task metric turns into the search's quality as 1 + (the candidate's metric - the
original's), both on the same examples, so `--max-drop 1%` allows one point of the metric
to be lost; for a metric where lower is better (perplexity) it is the original's divided by
the candidate's, so `--max-drop 1%` allows it to rise by about 1 %.

A few hundred labelled examples measure a metric only to a point or two, so by default the
difference is the pessimistic one: its lower `confidence` quantile over a paired
bootstrap of the deciding examples (the same resampled examples for both models). Half of
--eval (alternate batches) decides; the other half is never seen by the search and gives the
figures the manifest reports for the chosen plan.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.plan import quality, split
from layerwise.compiler.plan.metrics import METRICS, default_metric
from layerwise.compiler.plan.metrics import metric as builtin
from layerwise.runtime.compare import Agreement


@dataclass
class Judge:
    """Scores outputs on `batches` (the split the search decides on); with a task metric,
    `test` holds the batches kept back for the report."""

    batches: list
    classify: bool
    metric_name: str | None = None
    metric: Callable | None = None
    test: list = field(default_factory=list)
    reference: dict = field(default_factory=dict)  # split -> the original's outputs / metric
    confidence: float = 0.75
    resamples: int = 200
    source: str = "--eval"  # where the labelled examples come from
    # a detector's or segmentation model's own agreement over every output
    agree: Agreement | None = None

    @property
    def every_output(self) -> bool:
        """Whether the judge reads every output (a task agreement), not just the first."""
        return self.agree is not None and self.metric is None

    @property
    def labels(self) -> np.ndarray:
        return _labels(self.batches)

    def describe(self) -> str:
        if self.every_output:
            return self.agree.description
        if self.metric is None:
            return "top-1 agreement" if self.classify else "mean cosine"
        return f"{self.metric_name} on {self.source}"

    def set_reference(self, run: Callable[[list], np.ndarray]) -> None:
        """Run the original model (run(batches) -> first output, concatenated) on each split."""
        self.reference["outputs"] = run(self.batches)
        if self.metric is not None:
            self.reference["search"] = self.score(self.reference["outputs"], self.batches)
            self.reference["test_outputs"] = run(self.test)
            self.reference["test"] = self.score(self.reference["test_outputs"], self.test)

    def test_fidelity(self, outputs: np.ndarray) -> float:
        """Label-free fidelity of `outputs` on the held-back test split to the original's
        (top-1 agreement for a classifier, else mean cosine): data no step has seen."""
        return quality([outputs], [self.reference["test_outputs"]], self.classify)

    def score(self, outputs: np.ndarray, batches: list) -> float:
        """The task metric of `outputs` on `batches`' labels."""
        value = self.metric(outputs, _labels(batches))
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise LayerwiseError(f"--metric {self.metric_name} returned {value!r}; it must "
                                 "return a number (higher is better)") from e

    @property
    def lower_is_better(self) -> bool:
        return bool(getattr(self.metric, "lower_is_better", False))

    def gain(self, value: float, reference: float) -> float:
        """What a candidate's metric `value` gains over the original's (negative: a loss)."""
        if self.lower_is_better:
            return reference / value - 1.0 if value > 0 else -np.inf
        return value - reference

    def point(self, outputs: np.ndarray) -> float:
        """The quality of `outputs` as measured, without the confidence margin."""
        if self.every_output:
            return float(self.agree(outputs, self.reference["outputs"])["agreement"])
        if self.metric is None:
            return quality([outputs], [self.reference["outputs"]], self.classify)
        return 1.0 + self.gain(self.score(outputs, self.batches), self.reference["search"])

    def quality(self, outputs: np.ndarray) -> float:
        """The search's quality of `outputs` on the deciding split (1.0: the original's)."""
        if self.metric is None or self.confidence <= 0:
            return self.point(outputs)
        diff = self.gain(self.score(outputs, self.batches), self.reference["search"])
        labels = self.labels
        # a metric may split into per-example parts and how they pool (perplexity: each
        # example's summed loss and token count), so a resample need not recompute it;
        # otherwise the parts are the outputs and labels themselves
        parts = getattr(self.metric, "parts", lambda o, y: (o, y))
        pool = getattr(self.metric, "pool", self.metric)
        if "parts" not in self.reference:
            self.reference["parts"] = parts(self.reference["outputs"], labels)
        mine, theirs = parts(outputs, labels), self.reference["parts"]

        def value(which, idx):
            return float(pool(*(p[idx] for p in which)))

        rng = np.random.default_rng(0)  # the same resamples for every candidate
        diffs = []
        for _ in range(self.resamples):
            idx = rng.integers(0, len(labels), len(labels))
            diffs.append(self.gain(value(mine, idx), value(theirs, idx)))
        return 1.0 + min(diff, float(np.quantile(diffs, 1.0 - self.confidence)))

    def record(self) -> dict:
        out = {"quality_metric": self.describe(), "held_out_batches": len(self.batches)}
        if self.metric is not None:
            out["task_metric"] = {
                "name": self.metric_name, "source": self.source,
                "lower_is_better": self.lower_is_better,
                "decide_examples": len(self.labels),
                "test_examples": len(_labels(self.test)),
                "reference": {"decide": self.reference["search"],
                              "test": self.reference["test"]},
                "max_drop_means": ("relative rise of the metric (lower is better)"
                                   if self.lower_is_better
                                   else "points of the metric lost against the original") + (
                    f", at {self.confidence:.0%} one-sided confidence (paired bootstrap of "
                    "the deciding examples)" if self.confidence > 0 else "")}
        return out


def make_judge(held: list, eval_batches: list | None, metric: str | None,
               classify: bool, confidence: float = 0.75, *,
               agree: Agreement | None = None) -> Judge:
    """The label-free judge on `held` (by `agree` when given: a detector's or segmentation
    model's own agreement, runtime/compare.agreement_for), or the task-metric judge on
    `eval_batches` (labelled, split in two: decide / test)."""
    fn = resolve_metric(metric) if metric else None
    source = "--eval"
    if eval_batches is None and getattr(fn, "token_labels", False):
        eval_batches = held  # a language model's metric needs no labels: the text is its own
        source = "held-out --data"
    if eval_batches is None:
        return Judge(held, classify, agree=agree)
    if getattr(fn, "token_labels", False):
        eval_batches = [_token_labelled(b) for b in eval_batches]
    if any(b.labels is None for b in eval_batches):
        raise LayerwiseError("--eval data has no labels: give an image folder with a "
                             "subfolder per class, a .tsv of text<TAB>label, or an .npz with a "
                             "'labels' array")
    decide, test = split(eval_batches)
    name = metric or default_metric(classify)
    return Judge(decide, classify, name, fn or resolve_metric(name), test,
                 confidence=confidence, source=source)


def resolve_metric(name: str) -> Callable:
    """The metric function a --metric names (built in, or module:function)."""
    fn = builtin(name)
    if fn is not None:
        return fn
    if ":" not in name:
        raise LayerwiseError(f"unknown --metric {name!r}: use {', '.join(METRICS)}, "
                             "recall@K, ndcg@K or module:function(outputs, labels) -> float")
    module, _, attr = name.rpartition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise LayerwiseError(f"cannot import --metric {name!r}: {e}") from e
    if not callable(fn):
        raise LayerwiseError(f"--metric {name!r} is not a function")
    return fn


def _token_labelled(batch):
    """`batch` with its token ids as labels (padding: -1), unless it has labels."""
    from layerwise.analysis.execution import Batch

    if batch.labels is not None or "input_ids" not in batch.inputs:
        return batch
    ids = batch.inputs["input_ids"].clone()
    mask = batch.inputs.get("attention_mask")
    if mask is not None:
        ids[mask == 0] = -1
    return Batch(batch.inputs, ids)


def _labels(batches: list) -> np.ndarray:
    return np.concatenate([np.asarray(b.labels) for b in batches]) if batches else np.zeros(0)
