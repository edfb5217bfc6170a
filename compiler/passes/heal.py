"""Heal: a short knowledge-distillation run that lets a dropped or pruned model (the student)
relearn the original model's (the teacher's) outputs on the user's own inputs.

The student is the unlifted graph module of the IR, trained in place with AdamW for a step
budget; the teacher's outputs are computed once per batch. The loss follows the output:
KL divergence at temperature 2 on classifier logits, else 1 − cosine plus a scaled MSE on the
model's main output (embeddings, hidden states). The trained module is re-exported, so the
result is a plain IR again. Labels are never needed: the teacher is the only target.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.ir import IR, flat_tensors


class HealError(LayerwiseError):
    """Healing cannot run (no data, nothing trainable)."""


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, classify: bool) -> torch.Tensor:
    """KL(teacher ‖ student) at T = 2 for logits; 1 − cos + normalised MSE otherwise."""
    s = student.reshape(student.shape[0], -1).float()
    t = teacher.reshape(teacher.shape[0], -1).float()
    if classify:
        temp = 2.0
        return F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1),
                        log_target=True, reduction="batchmean") * temp * temp
    cos = F.cosine_similarity(s, t, dim=-1, eps=1e-8).mean()
    mse = F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-12)
    return (1.0 - cos) + 0.1 * mse


def heal(ir: IR, teacher: IR, batches: list[dict[str, torch.Tensor]], *, steps: int = 100,
         lr: float = 5e-5, evaluate: Callable[[IR], float] | None = None,
         classify: bool | None = None, seed: int = 0,
         targets: list[torch.Tensor] | None = None) -> IR:
    """Distil `teacher` into `ir` for `steps` optimizer steps over `batches` (cycled).

    Assumes both IRs take the same inputs and that the first output is the one that matters;
    `targets`, when given, are the teacher's first outputs on `batches` (not recomputed).
    `evaluate(ir) -> quality` (higher is better), when given, is called before and after;
    both figures and the losses go into the pass record. Returns a new IR.
    """
    if not batches:
        raise HealError("heal needs data (--data): the student learns the original model's "
                        "outputs on those inputs")
    if steps <= 0:
        return ir
    torch.manual_seed(seed)
    if classify is None:
        classify = ir.meta.get("task") == "classification"
    if targets is None:
        with torch.no_grad():
            tmod = teacher.module()
            targets = [_first(tmod(**b)) for b in batches]
    elif len(targets) != len(batches):
        raise HealError(f"heal got {len(targets)} teacher outputs for {len(batches)} batches")
    gm = copy.deepcopy(ir.module())  # module() shares its tensors with the program
    params = [p for p in gm.parameters() if p.is_floating_point()]
    if not params:
        raise HealError("the model has no floating-point parameters to train")
    for p in params:
        p.requires_grad_(True)
    before = evaluate(ir) if evaluate else None
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / max(1, steps // 10))
        * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        i = step % len(batches)
        loss = distill_loss(_first(gm(**batches[i])), targets[i], classify)
        if not torch.isfinite(loss):
            raise HealError(f"healing diverged at step {step} (loss {loss.item()}); "
                            "lower the learning rate or the step count")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - t0
    for p in params:
        p.requires_grad_(False)
    window = max(1, len(losses) // 10)
    record = {"name": "heal", "steps": steps, "lr": lr, "batches": len(batches),
              "loss": "kl" if classify else "cosine+mse",
              "loss_first": sum(losses[:window]) / window,
              "loss_last": sum(losses[-window:]) / window, "seconds": seconds}
    try:
        with torch.no_grad():
            healed = ir.rebuilt(gm, record)
    except Exception as e:  # noqa: BLE001 - export failures come in many types
        raise HealError(f"re-exporting the healed model failed: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}") from e
    if evaluate:
        record["quality_before"] = before
        record["quality_after"] = evaluate(healed)
    return healed


def _first(out) -> torch.Tensor:
    return flat_tensors(out)[0]
