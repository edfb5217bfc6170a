"""The LiteRT generator step (targets/tflite/decoder.py's file): signatures `prefill` (a fixed
number of tokens) and `decode` (one) over a fixed-size KV cache kept here as numpy arrays.

`step(ids [1, S])` runs one token by `decode`, more by `prefill` in chunks of its length, the
last chunk padded; pad tokens take the position `max_seq`, which the graph writes nowhere, so
they leave the cache as it was. Torch-free."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from layerwise.base.errors import BundleError, TargetError
from layerwise.runtime.bundle import RECREATE

SIGNATURES = ("prefill", "decode")


class LiteRtRunner:
    """The interpreter holding both signatures; `.name`, `.version`, `.threads` as the
    other runners report them."""

    name = "litert"

    def __init__(self, model_file: Path, threads: int = 0) -> None:
        try:
            import ai_edge_litert
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise TargetError("LiteRT is not installed: pip install ai-edge-litert") from e
        from layerwise.runtime.litert import _dist_version

        self.threads = threads or os.cpu_count() or 1
        self.version = getattr(ai_edge_litert, "__version__", None) or _dist_version()
        try:
            self.interp = Interpreter(model_path=str(model_file), num_threads=self.threads)
            found = self.interp.get_signature_list()
        except Exception as e:  # noqa: BLE001 - LiteRT raises ValueError / RuntimeError
            raise BundleError(f"LiteRT cannot load {Path(model_file).name}: "
                              f"{(str(e).strip().splitlines() or [''])[-1][:200]}; "
                              f"{RECREATE}") from e
        if sorted(found) != sorted(SIGNATURES):
            raise BundleError(f"{model_file}: the model's signatures are {sorted(found)}, not "
                              f"{list(SIGNATURES)}; {RECREATE}")
        self.signatures = found
        self.runners = {k: self.interp.get_signature_runner(k) for k in SIGNATURES}


class LiteRtStep:
    """The fixed-cache generator on LiteRT: `length` tokens are in the cache."""

    def __init__(self, model_file: Path, generation: dict, threads: int = 0,
                 per_op: bool = False) -> None:
        self.config = generation
        self.runner = LiteRtRunner(model_file, threads)
        g = generation
        self.max_seq = g["max_seq"]
        self.cache_names = [f"kv_cache_{kv}_{i}" for i in range(g["layers"]) for kv in "kv"]
        want = sorted(["tokens", "input_pos", *self.cache_names])
        cache = [1, g["kv_heads"], self.max_seq, g["head_dim"]]
        details = {k: r.get_input_details() for k, r in self.runner.runners.items()}
        for key, d in details.items():
            if sorted(d) != want or any(list(d[n]["shape"]) != cache
                                        for n in self.cache_names):
                raise BundleError(f"{model_file}: the {key} signature does not take the "
                                  f"{g['layers']}-layer cache of {self.max_seq} rows the "
                                  f"generation section describes; {RECREATE}")
        self.prefill_len = int(details["prefill"]["tokens"]["shape"][-1])
        self.reset()

    def reset(self, batch: int = 1) -> None:
        g = self.config
        if batch != 1:
            raise BundleError("a tflite generator runs one sequence at a time (batch 1)")
        shape = (1, g["kv_heads"], self.max_seq, g["head_dim"])
        self.cache = {n: np.zeros(shape, np.float32) for n in self.cache_names}
        self.length = 0

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Append `ids [1, S]`; returns their logits [1, S, V]."""
        ids = np.asarray(ids)
        count = ids.shape[1]
        if ids.shape[0] != 1:
            raise BundleError("a tflite generator runs one sequence at a time (batch 1)")
        if self.length + count > self.max_seq:
            raise BundleError(f"{self.length} tokens in the cache plus {count} new exceed the "
                              f"bundle's --max-seq {self.max_seq}; shorten the prompt or "
                              "recompile with a larger --max-seq")
        if count == 1:
            return self._run("decode", ids.astype(np.int32), 1)
        parts = []
        for start in range(0, count, self.prefill_len):
            chunk = ids[:, start:start + self.prefill_len].astype(np.int32)
            used = chunk.shape[1]
            if used < self.prefill_len:
                chunk = np.pad(chunk, ((0, 0), (0, self.prefill_len - used)))
            parts.append(self._run("prefill", chunk, used))
        return np.concatenate(parts, axis=1)

    def _run(self, key: str, tokens: np.ndarray, used: int) -> np.ndarray:
        """One call of signature `key`: the first `used` tokens at the next positions, the
        rest at max_seq (written nowhere); returns the used tokens' logits."""
        pos = np.full(tokens.shape[1], self.max_seq, np.int32)
        pos[:used] = np.arange(self.length, self.length + used, dtype=np.int32)
        try:
            out = self.runner.runners[key](tokens=tokens, input_pos=pos, **self.cache)
        except Exception as e:  # noqa: BLE001 - LiteRT raises ValueError / RuntimeError
            raise BundleError(f"LiteRT {key} failed: "
                              f"{(str(e).strip().splitlines() or [''])[-1][:300]}") from e
        self.cache = {n: out[n] for n in self.cache_names}
        self.length += used
        return out["logits"][:, :used]

