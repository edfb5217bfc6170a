"""heal: distillation from the original model after dropping blocks recovers quality on
held-out inputs, for an MLP and a transformer (cosine + MSE loss) and a CNN classifier (KL on
logits)."""

from __future__ import annotations

import pytest
import torch

from layerwise.compiler.passes.drop_layers import drop_layers
from layerwise.compiler.passes.heal import HealError, distill_loss, heal
from tests.analysis.planted import CRITICAL, planted


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())


def test_distill_loss_is_zero_at_the_teacher():
    t = torch.randn(4, 7)
    assert distill_loss(t, t, classify=True).item() == pytest.approx(0.0, abs=1e-6)
    assert distill_loss(t, t, classify=False).item() == pytest.approx(0.0, abs=1e-6)
    assert distill_loss(-t, t, classify=False).item() > 1.9


@pytest.mark.parametrize("kind", ["mlp", "cnn", "transformer"])
def test_heal_recovers_a_dropped_critical_block(kind):
    ir, data, paths = planted(kind, batches=12)
    train, held = data[:8], data[8:]
    student = drop_layers(ir, [paths[CRITICAL]])
    with torch.no_grad():
        teacher = torch.cat([ir.run(b)[0] for b in held])
        before = torch.cat([student.run(b)[0] for b in held])
    metric = _agreement if kind == "cnn" else _cosine

    def evaluate(candidate) -> float:
        with torch.no_grad():
            return metric(torch.cat([candidate.run(b)[0] for b in held]), teacher)

    healed = heal(student, ir, train, steps=150, lr=3e-3, evaluate=evaluate,
                  classify=kind == "cnn")
    record = healed.annotations["passes"][-1]
    assert record["name"] == "heal" and record["steps"] == 150
    assert record["loss_last"] < 0.5 * record["loss_first"]
    assert record["quality_before"] == pytest.approx(metric(before, teacher))
    # held-out inputs the student never trained on: healing closes most of the gap
    gap_before = 1.0 - record["quality_before"]
    gap_after = 1.0 - record["quality_after"]
    assert gap_before > 0.02 and gap_after < 0.5 * gap_before, record
    # the healed IR is a plain IR: same blocks, same parameter count, new weights
    assert [b.path for b in healed.layers if b.block] == [
        b.path for b in student.layers if b.block]
    assert healed.params == student.params
    # the student IR it came from is untouched
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([student.run(b)[0] for b in held]), before)


def test_heal_needs_data():
    ir, _, paths = planted("mlp")
    with pytest.raises(HealError, match="needs data"):
        heal(drop_layers(ir, [paths[0]]), ir, [], steps=10)


def test_heal_takes_the_teachers_outputs_once_computed():
    """A plan search heals every candidate from the same teacher outputs: passing them in
    gives the very same student as recomputing them, and they must match the batches."""
    ir, data, paths = planted("mlp", batches=4)
    student = drop_layers(ir, [paths[0]])
    targets = [ir.run(b)[0] for b in data]
    a = heal(student, ir, data, steps=5, lr=1e-3)
    b = heal(student, ir, data, steps=5, lr=1e-3, targets=targets)
    with torch.no_grad():
        torch.testing.assert_close(a.run(data[0])[0], b.run(data[0])[0], rtol=0, atol=0)
    with pytest.raises(HealError, match="3 teacher outputs for 4 batches"):
        heal(student, ir, data, steps=5, targets=targets[:3])


def test_hidden_states_budget_and_early_stop():
    """Intermediate distillation matches every block both models keep; a time budget ends
    the run before its step count; the healing curve is measured on held-out inputs and the
    student kept is the one with the lowest held-out loss."""
    import time

    ir, data, paths = planted("transformer", batches=8)
    student = drop_layers(ir, [paths[0]])
    kept = [b.path for b in student.layers if b.block]
    t0 = time.perf_counter()
    healed = heal(student, ir, data[:6], steps=100_000, lr=3e-3, hidden=1.0, budget_s=8.0,
                  held=data[6:], eval_every=5)
    spent = time.perf_counter() - t0
    record = healed.annotations["passes"][-1]
    assert record["matched_blocks"] == len(kept) > 0 and record["width_maps"] == 0
    assert 5 < record["steps"] < 100_000 and record["seconds"] < spent
    curve = record["curve"]
    assert len(curve) >= 2 and all(c["step"] % 5 == 0 for c in curve[:-1])
    best = min(curve, key=lambda c: c["held_loss"])
    assert record["kept_step"] in (best["step"], record["steps"])
    assert record["held_examples"] == sum(next(iter(b.values())).shape[0] for b in data[6:])


def test_augmented_batches_keep_their_frame():
    """Text: tokens move only among a sequence's own attended inner positions; the first and
    last attended tokens and the padding stay. Images: a flip and a shift of the same pixels."""
    from layerwise.compiler.passes.heal import _augmented

    gen = torch.Generator().manual_seed(0)
    ids = torch.arange(1, 41).reshape(2, 20)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 12:] = 0
    out = _augmented({"input_ids": ids, "attention_mask": mask}, gen)
    new = out["input_ids"]
    assert not torch.equal(new, ids) and torch.equal(out["attention_mask"], mask)
    assert torch.equal(new[:, 0], ids[:, 0])
    assert new[0, 19] == ids[0, 19] and new[1, 11] == ids[1, 11]
    assert torch.equal(new[1, 12:], ids[1, 12:])
    assert set(new[1, :12].tolist()) <= set(ids[1, :12].tolist())
    x = torch.randn(1, 3, 8, 8)
    y = _augmented({"x": x}, gen)["x"]
    assert y.shape == x.shape and torch.allclose(y.abs().sum(), x.abs().sum())
