"""A causal language model as one exportable step with an explicit KV cache: the graph a
prefill and every decode step run (issue 23's onnx prefill/decode).

`KVStep(model)` takes `input_ids [B, S]`, `attention_mask [B, P + S]` and, per layer, the past
keys and values `[B, KV_HEADS, P, HEAD_DIM]`; it returns the logits `[B, S, VOCAB]` and the
present keys and values `[B, KV_HEADS, P + S, HEAD_DIM]`. Sequence and past length export as
dynamic dimensions, so one graph serves prefill (P small or zero-length) and decode (S = 1).
Assumes a transformers causal LM whose forward accepts a `DynamicCache` as `cache`.
"""

from __future__ import annotations

import torch


def cache_shape(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a decoder config."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers, kv, head_dim


class KVStep(torch.nn.Module):
    """One forward step of `model` with the cache as plain tensors in and out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layers = cache_shape(model.config)[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache,
                         use_cache=True)
        present = []
        for layer in out.past_key_values.layers[:self.layers]:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def example_step(config, batch: int = 1, seq: int = 4, past: int = 3,
                 seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs of `KVStep`: random ids, a full mask, random past keys and values."""
    gen = torch.Generator().manual_seed(seed)
    layers, kv, head_dim = cache_shape(config)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    cache = [torch.randn(batch, kv, past, head_dim, generator=gen) for _ in range(2 * layers)]
    return (ids, mask, *cache)


def export_step(model: torch.nn.Module, example: tuple[torch.Tensor, ...]):
    """torch.export of `KVStep(model)` with dynamic sequence and past length."""
    from torch.export import Dim

    step = KVStep(model).eval()
    n = len(example) - 2
    dynamic = ({1: Dim.AUTO}, {1: Dim.AUTO}, tuple({2: Dim.AUTO} for _ in range(n)))
    return torch.export.export(step, example, dynamic_shapes=dynamic, strict=False)
