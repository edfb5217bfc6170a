"""The compile pipeline's pass lists as data, run by `run_passes`.

Two lists: `shrink_steps` makes a model smaller (drop blocks, prune channels, heal by
distillation from the original), `finish_steps` readies it for one target (the user's extra
passes, the target's legalizations, then quantize and the range equalization its recipe
asks for). Each step is a pass name with its arguments; the front decides the arguments
(which blocks, which recipe), the passes do the work.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.passes import Step, run_passes
from layerwise.compiler.plan import quality


def _noop(_: str) -> None:
    pass


@dataclass(frozen=True)
class Shrink:
    """What makes a model smaller: blocks to drop, a channel prune ratio and its criterion
    (None: activation with data, else l2), distillation steps and learning rate."""

    drop: tuple[str, ...] = ()
    prune: float | None = None
    criterion: str | None = None
    heal_steps: int = 0
    heal_lr: float = 5e-5
    heal_budget_s: float | None = None
    heal_hidden: float = 1.0
    heal_augment: bool = False

    def smaller(self) -> bool:
        return bool(self.drop or self.prune)


@dataclass
class Teacher:
    """The original model's outputs on the healing inputs, computed once and shared by every
    candidate of one plan search."""

    outputs: list = field(default_factory=list)


def shrink_steps(ir, spec: Shrink, batches: list, teacher: Teacher | None = None
                 ) -> list[Step]:
    """The passes that make `ir` smaller under `spec` (`batches`: data batches with .inputs,
    for data-driven pruning and healing)."""
    feeds = [b.inputs for b in batches]
    steps: list[Step] = []
    if spec.drop:
        steps.append(Step("drop_layers", {"paths": list(spec.drop)},
                          f"dropping {len(spec.drop)} block(s)"))
    if spec.prune:
        criterion = spec.criterion or ("activation" if feeds else "l2")
        steps.append(Step("prune", {"ratio": spec.prune, "criterion": criterion,
                                    "batches": feeds or None},
                          f"pruning {spec.prune:.0%} of the channels ({criterion})"))
    if spec.heal_steps and steps:
        if not feeds:
            raise LayerwiseError("--heal-steps needs --data (the inputs to distil on)")
        teacher = teacher if teacher is not None else Teacher()
        if not teacher.outputs:
            teacher.outputs = [ir.run(f)[0] for f in feeds]
        classify = ir.meta.get("task") == "classification"
        # every fifth batch is held out: the healing curve and the early stop
        train = [i for i in range(len(feeds)) if len(feeds) < 5 or i % 5 != 4]
        held = [i for i in range(len(feeds)) if i not in train]
        judged = held or train  # the heal record's quality before/after
        steps.append(Step("heal", {
            "teacher": ir, "batches": [feeds[i] for i in train], "steps": spec.heal_steps,
            "lr": spec.heal_lr, "classify": classify,
            "targets": [teacher.outputs[i] for i in train], "hidden": spec.heal_hidden,
            "budget_s": spec.heal_budget_s, "held": [feeds[i] for i in held] or None,
            "augment": spec.heal_augment,
            "evaluate": _fidelity([feeds[i] for i in judged],
                                  [teacher.outputs[i] for i in judged], classify)},
            f"healing: up to {spec.heal_steps} distillation steps"))
    return steps


def shrink(ir, spec: Shrink, batches: list, teacher: Teacher | None = None,
           progress: Callable[[str], None] = _noop):
    """`ir` made smaller by `spec` (itself when nothing is to be removed)."""
    if not spec.smaller():
        return ir
    return run_passes(ir, shrink_steps(ir, spec, batches, teacher), progress)


def finish_steps(extra: list[str], legalize: tuple[str, ...] | list[str],
                 quantize: dict | None = None) -> list[Step]:
    """The passes that ready a model for a target: `extra` (the user's), the target's
    `legalize` list, then with `quantize` (the quantize pass's arguments: recipe, keep_fp32,
    precision) quantize and equalize."""
    steps = [Step(name) for name in (*extra, *legalize)]
    if quantize is not None:
        steps += [Step("quantize", quantize), Step("equalize")]
    return steps


def finish(ir, extra: list[str], legalize: tuple[str, ...] | list[str],
           quantize: dict | None = None, progress: Callable[[str], None] = _noop):
    """A copy of `ir` (its annotations not shared) through `finish_steps`."""
    ir = dataclasses.replace(ir, annotations=copy.deepcopy(ir.annotations))
    return run_passes(ir, finish_steps(extra, legalize, quantize), progress)


def _fidelity(feeds: list, targets: list, classify: bool) -> Callable:
    """quality(candidate) on `feeds` against the teacher's `targets` (for the heal record)."""
    reference = [np.concatenate([t.numpy() for t in targets])]

    def evaluate(candidate) -> float:
        return quality([np.concatenate([candidate.run(f)[0].numpy() for f in feeds])],
                       reference, classify)

    return evaluate
