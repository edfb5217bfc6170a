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


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """The step's input and output names, as onnxruntime-genai's decoders name them."""
    kv = [f"{{}}.{i}.{k}" for i in range(layers) for k in ("key", "value")]
    return (["input_ids", "attention_mask", *(n.format("past_key_values") for n in kv)],
            ["logits", *(n.format("present") for n in kv)])


def example_step(config, batch: int = 2, seq: int = 4, past: int = 3,
                 seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs of `KVStep`: random ids, a full mask, random past keys and values."""
    gen = torch.Generator().manual_seed(seed)
    layers, kv, head_dim = cache_shape(config)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    cache = [torch.randn(batch, kv, past, head_dim, generator=gen) for _ in range(2 * layers)]
    return (ids, mask, *cache)


def export_step(model: torch.nn.Module, example: tuple[torch.Tensor, ...]):
    """torch.export of `KVStep(model)` with dynamic batch, sequence and past length (one
    past length shared by every cache tensor); the example's batch must be above 1."""
    from torch.export import Dim

    step = KVStep(model).eval()
    n = len(example) - 2
    batch, past = Dim("batch"), Dim("past")
    dynamic = ({0: batch, 1: Dim.AUTO}, {0: batch, 1: Dim.AUTO},
               tuple({0: batch, 2: past} for _ in range(n)))
    return torch.export.export(step, example, dynamic_shapes=dynamic, strict=False)


def block_list(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The path and ModuleList of a causal LM's decoder blocks (Llama-style `model.layers`,
    GPT-2-style `transformer.h`)."""
    for path in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        mod = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, torch.nn.ModuleList):
            return path, mod
    raise ValueError(f"{type(model).__name__} has no decoder block list this knows")


def drop_blocks(model: torch.nn.Module, drop: list[int]) -> torch.nn.Module:
    """A copy of `model` without the decoder blocks at indices `drop`: the config's layer
    count (and per-layer lists) shrink and the kept blocks are renumbered, so the exported
    step carries a cache for the kept blocks only."""
    import copy

    small = copy.deepcopy(model)
    path, blocks = block_list(small)
    keep = [i for i in range(len(blocks)) if i not in set(drop)]
    parent = small.get_submodule(path.rsplit(".", 1)[0])
    setattr(parent, path.rsplit(".", 1)[1], torch.nn.ModuleList(blocks[i] for i in keep))
    for new, block in enumerate(block_list(small)[1]):
        for mod in block.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new
    config = small.config
    config.num_hidden_layers = len(keep)
    for name in ("layer_types",):  # per-layer attention kinds (sliding / full)
        values = getattr(config, name, None)
        if isinstance(values, list) and len(values) == len(blocks):
            setattr(config, name, [values[i] for i in keep])
    return small


def cache_bytes_per_token(config, dtype_bytes: int = 4) -> int:
    """Bytes the KV cache grows by per token and sequence (keys and values, every layer)."""
    layers, kv, head_dim = cache_shape(config)
    return 2 * layers * kv * head_dim * dtype_bytes
