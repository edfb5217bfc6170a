"""Heal: knowledge distillation that lets a dropped or pruned model (the student) relearn
the original model (the teacher) on the user's own inputs. Labels are never needed.

The student is the unlifted graph module of the IR, trained with AdamW (warm-up, cosine
decay) for a step count or a time budget, whichever ends first. The loss follows the output
— KL divergence at temperature 2 on classifier logits, else 1 − cosine plus a scaled MSE on
the main output — plus, by `hidden` weight, the hidden states: each block both models keep
(same path) has its output matched to the teacher's (MSE normalised by the teacher's
power), through a learned linear map where pruning changed the width (TinyBERT's and
Minitron's intermediate distillation). With `augment`, each step sees a perturbed copy of its
batch (text: a share of the tokens swapped among the sequence's own tokens; images: flips
and shifts) and the teacher is run on the same copy, so the student learns the function
rather than the few inputs. With `held` inputs, the output loss there is measured every
`eval_every` steps (the healing curve) and the student with the lowest held-out loss is kept.
The trained module is re-exported, so the result is a plain IR again.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from layerwise.base.errors import LayerwiseError
from layerwise.compiler.capture import Capture
from layerwise.compiler.ir import IR, flat_tensors
from layerwise.compiler.layers import blocks


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
         targets: list[torch.Tensor] | None = None, hidden: float = 0.0,
         budget_s: float | None = None, held: list[dict[str, torch.Tensor]] | None = None,
         augment: bool = False, eval_every: int | None = None) -> IR:
    """Distil `teacher` into `ir` for at most `steps` optimizer steps (and `budget_s`
    seconds) over `batches` (cycled).

    Assumes both IRs take the same inputs and that the first output is the one that matters;
    `targets`, when given, are the teacher's first outputs on `batches` (reused unless
    `augment` changes the inputs). `evaluate(ir) -> quality` (higher is better), when given,
    is called before and after; both figures, the losses and the healing curve go into the
    pass record. Returns a new IR.
    """
    if not batches:
        raise HealError("heal needs data (--data): the student learns the original model's "
                        "outputs on those inputs")
    if steps <= 0:
        return ir
    if targets is not None and len(targets) != len(batches):
        raise HealError(f"heal got {len(targets)} teacher outputs for {len(batches)} batches")
    torch.manual_seed(seed)
    if classify is None:
        classify = ir.meta.get("task") == "classification"
    d = _Distiller(ir, teacher, batches, classify=classify, hidden=hidden, targets=targets,
                   augment=augment, seed=seed)
    before = evaluate(ir) if evaluate else None
    d.train(steps, lr, budget_s, held or [], eval_every or max(1, steps // 10))
    window = max(1, len(d.losses) // 10)
    record = {"name": "heal", "steps": len(d.losses), "lr": lr, "batches": len(batches),
              "examples": sum(_rows(b) for b in batches),
              "loss": "kl" if classify else "cosine+mse",
              "hidden_weight": hidden, "matched_blocks": len(d.pairs),
              "width_maps": len(d.maps), "augment": augment,
              "loss_first": sum(d.losses[:window]) / window,
              "loss_last": sum(d.losses[-window:]) / window, "seconds": d.seconds}
    if held:
        record.update(held_examples=sum(_rows(b) for b in held), curve=d.curve,
                      kept_step=d.kept_step)
    try:
        with torch.no_grad():
            healed = ir.rebuilt(d.gm, record)
    except Exception as e:  # noqa: BLE001 - export failures come in many types
        raise HealError(f"re-exporting the healed model failed: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}") from e
    if evaluate:
        record["quality_before"] = before
        record["quality_after"] = evaluate(healed)
    return healed


class _Distiller:
    """The student module, the teacher, the matched hidden states and the training loop."""

    def __init__(self, ir: IR, teacher: IR, batches: list, *, classify: bool, hidden: float,
                 targets: list | None, augment: bool, seed: int) -> None:
        self.gm = copy.deepcopy(ir.module())  # module() shares its tensors with the program
        self.batches, self.classify, self.hidden = batches, classify, hidden
        self.targets, self.augment = targets, augment
        self.gen = torch.Generator().manual_seed(seed)
        tmod = teacher.module()
        self.pairs = _matched_blocks(ir, teacher, self.gm, tmod) if hidden > 0 else []
        self.student = Capture(self.gm, {s for s, _ in self.pairs})
        self.teacher = Capture(tmod, {t for _, t in self.pairs})
        self.maps = self._width_maps(batches[0])
        self.params = [p for p in self.gm.parameters() if p.is_floating_point()]
        if not self.params:
            raise HealError("the model has no floating-point parameters to train")
        self.cache: dict[int, tuple] = {}  # batch -> the teacher's output and hidden states
        self.losses: list[float] = []
        self.curve: list[dict] = []
        self.seconds = 0.0
        self.kept_step = 0

    def _width_maps(self, feed: dict) -> dict:
        """A linear map (student width -> teacher width, on the channel axis) for each
        matched block whose output width pruning changed; pairs whose shapes differ otherwise
        are not matched."""
        if not self.pairs:
            return {}
        with torch.no_grad():
            self.student.run_feed(feed)
            self.teacher.run_feed(feed)
        maps, keep = {}, []
        for s, t in self.pairs:
            a, b = self.student.values.get(s), self.teacher.values.get(t)
            if a is None or b is None or a.dim() != b.dim():
                continue
            axis = 1 if a.dim() == 4 else a.dim() - 1
            rest = [[n for i, n in enumerate(x.shape) if i != axis] for x in (a, b)]
            if a.shape == b.shape:
                keep.append((s, t))
            elif rest[0] == rest[1]:
                maps[s] = _ChannelMap(a.shape[axis], b.shape[axis], axis)
                keep.append((s, t))
        self.pairs = keep
        return maps

    def teach(self, i: int, feed: dict) -> tuple:
        """The teacher's first output and matched hidden states on `feed` (batch i)."""
        if i in self.cache:
            return self.cache[i]
        with torch.no_grad():
            if self.pairs or self.targets is None or self.augment:
                out = _first(self.teacher.run_feed(feed))
            if self.targets is not None and not self.augment:
                out = self.targets[i]
            value = (out, {t: self.teacher.values[t].detach() for _, t in self.pairs})
        if not self.augment:
            self.cache[i] = value
        return value

    def loss(self, step: int) -> torch.Tensor:
        i = step % len(self.batches)
        feed = _augmented(self.batches[i], self.gen) if self.augment else self.batches[i]
        t_out, t_hidden = self.teach(i, feed)
        loss = distill_loss(_first(self.student.run_feed(feed)), t_out, self.classify)
        if self.pairs:
            loss = loss + self.hidden * sum(
                _hidden_loss(self.maps.get(s), self.student.values[s], t_hidden[t])
                for s, t in self.pairs) / len(self.pairs)
        if not torch.isfinite(loss):
            raise HealError(f"healing diverged at step {step} (loss {loss.item()}); "
                            "lower the learning rate or the step count")
        return loss

    def train(self, steps: int, lr: float, budget_s: float | None, held: list,
              every: int) -> None:
        """Train until `steps` or `budget_s`; with `held`, keep the best held-out student."""
        for p in self.params:
            p.requires_grad_(True)
        trainable = self.params + [p for m in self.maps.values() for p in m.parameters()]
        opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
        with torch.no_grad():
            ref = [_first(self.teacher.run_feed(f)) for f in held]
        best: tuple[float, dict | None, int] = (math.inf, None, 0)
        t0 = time.perf_counter()
        for step in range(steps):
            done = max(step / steps, (time.perf_counter() - t0) / budget_s if budget_s else 0)
            if done >= 1.0 and self.losses:
                break
            for g in opt.param_groups:  # warm-up over the first tenth, then cosine decay
                g["lr"] = lr * min(1.0, (done + 1e-9) * 10) * 0.5 * (1 + math.cos(math.pi * done))
            loss = self.loss(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            self.losses.append(float(loss.detach()))
            last = step + 1 == steps
            if held and ((step + 1) % every == 0 or last):
                h = _held_loss(self.gm, held, ref, self.classify)
                self.curve.append({"step": step + 1, "loss": self.losses[-1], "held_loss": h,
                                   "seconds": time.perf_counter() - t0})
                if h < best[0]:
                    best = (h, {k: v.detach().clone() for k, v in self.gm.state_dict().items()},
                            step + 1)
        self.seconds = time.perf_counter() - t0
        self.kept_step = len(self.losses)
        if held:
            h = _held_loss(self.gm, held, ref, self.classify)
            if best[1] is not None and best[0] < h:  # early stop: the best held-out student
                self.gm.load_state_dict(best[1])
                self.kept_step = best[2]
        for p in self.params:
            p.requires_grad_(False)


def _first(out) -> torch.Tensor:
    return flat_tensors(out)[0]


def _rows(feed: dict) -> int:
    return int(next(iter(feed.values())).shape[0])


def _matched_blocks(ir: IR, teacher: IR, gm, tmod) -> list[tuple[str, str]]:
    """(student node, teacher node) of the output of each block both models keep."""
    from layerwise.compiler.passes.drop_layers import DropLayersError, block_boundary

    theirs = {b.path: b for b in blocks(teacher.layers)}
    pairs = []
    for b in blocks(ir.layers):
        if b.path not in theirs:
            continue
        try:
            s = block_boundary(gm.graph, b)[1]
            t = block_boundary(tmod.graph, theirs[b.path])[1]
        except DropLayersError:
            continue
        pairs.append((s.name, t.name))
    return pairs


class _ChannelMap(torch.nn.Module):
    def __init__(self, n_in: int, n_out: int, axis: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(n_in, n_out, bias=False)
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.movedim(self.axis, -1)).movedim(-1, self.axis)


def _hidden_loss(mapping, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    s = (mapping(student) if mapping is not None else student).float()
    return F.mse_loss(s, teacher.float()) / teacher.float().pow(2).mean().clamp_min(1e-12)


def _held_loss(gm, held: list, reference: list, classify: bool) -> float:
    with torch.no_grad():
        return float(sum(distill_loss(_first(gm(**f)), r, classify)
                         for f, r in zip(held, reference)) / len(held))


def _augmented(feed: dict[str, torch.Tensor], gen: torch.Generator) -> dict:
    """A perturbed copy: token ids swapped among each sequence's own attended tokens (15%,
    the first and last attended kept), images flipped and shifted; other inputs as they are."""
    out = dict(feed)
    mask = feed.get("attention_mask")
    for k, v in feed.items():
        if k == "input_ids" and v.dim() == 2 and not v.is_floating_point():
            ids = v.clone()
            for r in range(ids.shape[0]):
                live = (mask[r] > 0).nonzero().flatten() if mask is not None else \
                    torch.arange(ids.shape[1])
                inner = live[1:-1]
                if len(inner) < 2:
                    continue
                pick = inner[torch.rand(len(inner), generator=gen) < 0.15]
                if len(pick):
                    src = inner[torch.randint(len(inner), (len(pick),), generator=gen)]
                    ids[r, pick] = v[r, src]
            out[k] = ids
        elif v.dim() == 4 and v.is_floating_point():
            x = v.flip(-1) if torch.rand(1, generator=gen).item() < 0.5 else v
            dy, dx = (int(d) for d in torch.randint(-4, 5, (2,), generator=gen))
            out[k] = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    return out
