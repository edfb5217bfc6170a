"""A causal language model as static-shape steps over a FIXED-size KV cache: the graphs a
LiteRT generator runs (`prefill` at T tokens, `decode` at one), as ai-edge-torch's
generative exports shape them.

`FixedStep(model, max_seq)` takes `tokens [1, T]` (int32), `input_pos [T]` (int32: the
cache rows the tokens go to) and, per layer, `kv_cache_k_{i}`, `kv_cache_v_{i}`
`[1, KV_HEADS, MAX_SEQ, HEAD_DIM]` (transformers' own cache layout, so attention reads the
cache with no transpose); it returns `logits [1, T, VOCAB]` and the updated caches, new
tensors of the same shape (no buffer is mutated). The model's own blocks compute attention:
a `FixedLayer` cache writes the new keys and values into rows `input_pos` (a one-hot compare
of `arange(MAX_SEQ)` with `input_pos`, then a select) and returns the whole cache, and a 4D
additive mask lets query t see the rows at or before `input_pos[t]`.

A position at or past MAX_SEQ matches no row: nothing is written for it. That is how padding
is kept out of the cache (the runtime gives pad tokens the position MAX_SEQ), and rows after
the current position, written or not, are masked until decode overwrites them in order.
Assumes a transformers causal LM with eager attention whose forward accepts `cache`,
`position_ids` and a prepared 4D float `attention_mask` (Llama, Qwen2, Mistral, ...).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from layerwise.base.errors import TargetError
from layerwise.compiler.decoder import cache_shape

TOKENS, POSITIONS = "tokens", "input_pos"


def cache_names(layers: int) -> list[str]:
    """The cache inputs (and outputs) in order: k then v for each layer."""
    return [f"kv_cache_{kv}_{i}" for i in range(layers) for kv in ("k", "v")]


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """The step's input and output names."""
    caches = cache_names(layers)
    return [TOKENS, POSITIONS, *caches], ["logits", *caches]


def write_rows(cache: torch.Tensor, new: torch.Tensor, hit: torch.Tensor,
               onehot: torch.Tensor) -> torch.Tensor:
    """`cache [1, H, S, D]` with rows `hit [S, 1]` replaced by `new [1, H, T, D]`
    (`onehot [T, S]`: 1 where token t goes to row s). Exact: each written row is one token's
    values times 1 plus zeros."""
    if new.shape[2] == 1:  # decode: the one new row broadcasts over the cache
        return torch.where(hit, new, cache)
    return torch.where(hit, torch.matmul(onehot.transpose(0, 1), new), cache)


class FixedLayer(CacheLayerMixin):
    """One layer's cache as a transformers cache layer: `update` returns new full-size
    tensors with the step's rows written (functional; the step reads them back)."""

    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, hit: torch.Tensor,
                 onehot: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.hit, self.onehot = hit, onehot
        self.max_seq = keys.shape[2]
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys = write_rows(self.keys, key_states, self.hit, self.onehot)
        self.values = write_rows(self.values, value_states, self.hit, self.onehot)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_seq, 0

    def get_seq_length(self) -> int:
        return 0  # unused: the step passes positions and a prepared mask

    def get_max_length(self) -> int:
        return self.max_seq


class FixedStep(torch.nn.Module):
    """One static step of `model` over a fixed cache of `max_seq` rows (see the module
    docstring for inputs and outputs)."""

    def __init__(self, model: torch.nn.Module, max_seq: int) -> None:
        super().__init__()
        check_fixed(model.config, max_seq)
        self.model = model
        self.layers = cache_shape(model.config)[0]
        self.max_seq = max_seq

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor,
                *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = torch.arange(self.max_seq, dtype=torch.int32)
        onehot_b = rows[None, :] == input_pos[:, None]  # [T, S]
        onehot = onehot_b.to(torch.float32)
        hit = onehot_b.any(0)[:, None]  # [S, 1]
        visible = rows[None, :] <= input_pos[:, None]  # [T, S]: keys at or before the query
        low = torch.finfo(torch.float32).min
        mask = torch.where(visible, 0.0, low)[None, None]  # [1, 1, T, S]
        cache = Cache(layers=[FixedLayer(caches[2 * i], caches[2 * i + 1], hit, onehot)
                              for i in range(self.layers)])
        # pad rows sit at max_seq: clamped for the model's own positions (a learned
        # position table ends at max_seq - 1); their outputs are never read
        positions = torch.clamp(input_pos, max=self.max_seq - 1)[None, :]
        out = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions,
                         cache=cache, use_cache=True)
        new = []
        for layer in cache.layers:
            new += [layer.keys, layer.values]
        return (out.logits, *new)


def check_fixed(config, max_seq: int) -> None:
    """Refuse a model the fixed-cache step cannot express (sliding-window layers whose window
    is shorter than the cache)."""
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None) or []
    if window and "sliding_attention" in kinds and window < max_seq:
        raise TargetError(f"{type(config).__name__} has sliding-window layers (window "
                          f"{window}) and the fixed-size generator cache holds {max_seq} rows; "
                          f"compile with --max-seq {window} or less, or use --target onnx")


def example(config, max_seq: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Example inputs of a step at `length` tokens: random ids at positions 0..length-1 and
    random caches."""
    gen = torch.Generator().manual_seed(seed)
    layers, kv, head_dim = cache_shape(config)
    out = {TOKENS: torch.randint(0, config.vocab_size, (1, length), generator=gen,
                                 dtype=torch.int32),
           POSITIONS: torch.arange(length, dtype=torch.int32)}
    for name in cache_names(layers):
        out[name] = torch.randn(1, kv, max_seq, head_dim, generator=gen)
    return out


def export_fixed(model: torch.nn.Module, max_seq: int, length: int):
    """(Core-ATen ExportedProgram, example inputs) of `FixedStep(model, max_seq)` at `length`
    tokens, all shapes static, inputs taken by keyword."""
    step = FixedStep(model, max_seq).eval()
    inputs = example(model.config, max_seq, length)

    class Keyword(torch.nn.Module):  # keyword inputs, named as the signatures name them
        def __init__(self) -> None:
            super().__init__()
            self.step = step

        def forward(self, **kw):
            return self.step(kw[TOKENS], kw[POSITIONS],
                             *(kw[n] for n in cache_names(step.layers)))

    with torch.no_grad():
        ep = torch.export.export(Keyword(), (), kwargs=inputs, strict=False)
    return ep.run_decompositions(), inputs
