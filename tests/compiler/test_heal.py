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
