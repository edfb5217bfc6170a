"""Model sources: random-weight models are the same on every load."""

from __future__ import annotations

import torch

from layerwise.sources import load_source


def test_random_weight_models_load_the_same_every_time():
    """FP32 and INT8 compiles of `timm:...` (two loads) must see one network, and loading
    must leave the caller's random state alone."""
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for spec in ("timm:resnet10t", "torchvision:squeezenet1_0"):
        a, b = (load_source(spec).module.state_dict() for _ in range(2))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.get_rng_state(), state)
