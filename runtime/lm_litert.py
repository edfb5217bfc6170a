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
from layerwise.runtime.lm_fixed import FixedCacheStep

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


class LiteRtStep(FixedCacheStep):
    """The fixed-cache generator on LiteRT: `length` tokens are in the cache."""

    runtime = "tflite"

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
        self.check_batch(batch)
        shape = (1, g["kv_heads"], self.max_seq, g["head_dim"])
        self.cache = {n: np.zeros(shape, np.float32) for n in self.cache_names}
        self.length = 0

    def cache_arrays(self) -> dict[str, np.ndarray]:
        """The cache as numpy arrays, by input name."""
        return dict(self.cache)

    def _run(self, key: str, tokens: np.ndarray, used: int) -> np.ndarray:
        """One call of signature `key`: the first `used` tokens at the next positions, the
        rest at max_seq (written nowhere); returns the used tokens' logits."""
        pos = self.positions(tokens, used)
        try:
            out = self.runner.runners[key](tokens=tokens, input_pos=pos, **self.cache)
        except Exception as e:  # noqa: BLE001 - LiteRT raises ValueError / RuntimeError
            raise BundleError(f"LiteRT {key} failed: "
                              f"{(str(e).strip().splitlines() or [''])[-1][:300]}") from e
        self.cache = {n: out[n] for n in self.cache_names}
        self.length += used
        return out["logits"][:, :used]

