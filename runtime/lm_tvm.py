"""The TVM generator step (targets/tvm/decoder.py's library): Relax VM functions `prefill` (a
fixed number of tokens) and `decode` (one) over a fixed-size KV cache, the weights loaded
once from weights.npz (model.json names the array each parameter takes) and passed to every
call after the step's own inputs.

As the LiteRT step: `step(ids [1, S])` runs one token by `decode`, more by `prefill` in
chunks of its length, the last chunk padded; pad tokens take the position `max_seq`, which
the graph writes nowhere. The cache stays in TVM tensors between calls (each call's output
caches are the next call's inputs). Torch-free."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from layerwise.base.errors import BundleError, TargetError
from layerwise.runtime.bundle import RECREATE
from layerwise.runtime.lm_fixed import FixedCacheStep
from layerwise.runtime.native_trust import check_native
from layerwise.runtime.tvm import allow_threads

FUNCTIONS = ("prefill", "decode")


class TvmDecoderRunner:
    """One Relax VM holding both functions and the weights as TVM tensors; `.name`,
    `.version`, `.threads` as the other runners report them."""

    name = "tvm"

    def __init__(self, model_file: Path, threads: int = 0, trust_native: bool = False) -> None:
        try:
            import tvm
            from tvm import relax
        except ImportError as e:
            raise TargetError("Apache TVM is not installed: pip install 'layerwise[tvm]'") from e
        model_file = Path(model_file)
        sidecar = model_file.with_suffix(".json")
        try:
            self.spec = json.loads(sidecar.read_text())
            functions = self.spec["functions"]
            weights_file = model_file.parent / Path(self.spec["weights"]).name
            params = list(self.spec["params"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BundleError(f"{model_file.name} has no readable {sidecar.name} (functions, "
                              f"params, weights) beside it; {RECREATE}") from e
        if sorted(functions) != sorted(FUNCTIONS):
            raise BundleError(f"{model_file.name}: the library's functions are "
                              f"{sorted(functions)}, not {list(FUNCTIONS)}; {RECREATE}")
        check_native(model_file, trust_native)
        self.threads = allow_threads(threads)
        tvm.get_global_func("runtime.config_threadpool")(0, self.threads)
        try:
            lib = tvm.runtime.load_module(str(model_file))
            self.vm = relax.VirtualMachine(lib, tvm.cpu())
            self.fns = {k: self.vm[k] for k in FUNCTIONS}
        except Exception as e:  # noqa: BLE001 - TVM raises its own types
            raise BundleError(f"TVM cannot load {model_file.name}: "
                              f"{(str(e).strip().splitlines() or [''])[-1][:200]}; re-create "
                              "the bundle on a machine of this architecture") from e
        try:
            with np.load(weights_file, allow_pickle=False) as z:  # a shared array loads once
                arrays = {n: tvm.runtime.tensor(np.ascontiguousarray(z[n]))
                          for n in dict.fromkeys(params)}
            self.weights = [arrays[n] for n in params]
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise BundleError(f"{weights_file.name} does not hold the weights "
                              f"{sidecar.name} lists; {RECREATE}") from e
        self.functions = functions
        self.version = tvm.__version__
        self._tvm = tvm

    def tensor(self, a: np.ndarray):
        return self._tvm.runtime.tensor(a)


class TvmStep(FixedCacheStep):
    """The fixed-cache generator on TVM's Relax VM: `length` tokens are in the cache."""

    runtime = "tvm"

    def __init__(self, model_file: Path, generation: dict, threads: int = 0,
                 per_op: bool = False) -> None:
        self.config = g = generation
        self.runner = TvmDecoderRunner(model_file, threads)
        self.max_seq = g["max_seq"]
        self.cache_names = [f"kv_cache_{kv}_{i}" for i in range(g["layers"]) for kv in "kv"]
        want = ["tokens", "input_pos", *self.cache_names]
        cache = [1, g["kv_heads"], self.max_seq, g["head_dim"]]
        for key, spec in self.runner.functions.items():
            shapes = {t["name"]: t["shape"] for t in spec["inputs"]}
            if spec.get("inputs_order") != want or any(shapes.get(n) != cache
                                                       for n in self.cache_names):
                raise BundleError(f"{model_file}: the {key} function does not take the "
                                  f"{g['layers']}-layer cache of {self.max_seq} rows the "
                                  f"generation section describes; {RECREATE}")
        prefill = {t["name"]: t["shape"] for t in self.runner.functions["prefill"]["inputs"]}
        self.prefill_len = int(prefill["tokens"][-1])
        self.reset()

    def reset(self, batch: int = 1) -> None:
        g = self.config
        self.check_batch(batch)
        zeros = np.zeros((1, g["kv_heads"], self.max_seq, g["head_dim"]), np.float32)
        self.cache = [self.runner.tensor(zeros) for _ in self.cache_names]
        self.length = 0

    def cache_arrays(self) -> dict[str, np.ndarray]:
        """The cache as numpy arrays, by input name."""
        return {n: t.numpy() for n, t in zip(self.cache_names, self.cache)}

    def _run(self, key: str, tokens: np.ndarray, used: int) -> np.ndarray:
        """One call of function `key`: the first `used` tokens at the next positions, the
        rest at max_seq (written nowhere); returns the used tokens' logits."""
        pos = self.positions(tokens, used)
        r = self.runner
        try:
            out = r.fns[key](r.tensor(np.ascontiguousarray(tokens)), r.tensor(pos),
                             *self.cache, *r.weights)
        except Exception as e:  # noqa: BLE001 - TVM raises its own types
            raise BundleError(f"TVM {key} failed: "
                              f"{(str(e).strip().splitlines() or [''])[-1][:300]}") from e
        self.cache = [out[i] for i in range(1, 1 + len(self.cache_names))]
        self.length += used
        return out[0].numpy()[:, :used]
