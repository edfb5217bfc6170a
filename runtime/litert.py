"""LiteRT runner: load a .tflite file with ai-edge-litert's Interpreter, run named numpy inputs.

A feed whose shape differs from the model's input (another batch) resizes the input and
re-allocates; that works for models whose graph does not bake the batch into constants. A
static model (no -1 in its inputs' signatures, e.g. a transformer fixed at batch 1) given a
multiple of its batch runs it in slices of its batch, the outputs concatenated.
The Python Interpreter has no per-op profiler: `op_profile()` times every op alone in a
one-op model cut from this one (runtime/litert_ops.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from layerwise.base.errors import BundleError, TargetError
from layerwise.runtime.batching import run_in_slices, slice_step


class LiteRTRunner:
    """One LiteRT interpreter on the CPU. `threads=0` uses every core."""

    name = "litert"

    def __init__(self, model: Path, threads: int = 0, per_op: bool = False) -> None:
        try:
            import ai_edge_litert
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise TargetError("LiteRT is not installed: pip install ai-edge-litert") from e
        self.threads = threads or os.cpu_count() or 1
        self._model, self._per_op, self._last_feeds = Path(model), per_op, None
        try:
            self.interp = Interpreter(model_path=str(model), num_threads=self.threads)
            self.interp.allocate_tensors()
        except Exception as e:
            raise BundleError(f"LiteRT cannot load {Path(model).name}: "
                              f"{str(e).strip().splitlines()[-1][:200]}; re-create the bundle"
                              ) from e
        self._inputs = self.interp.get_input_details()
        self._outputs = self.interp.get_output_details()
        self.input_names = [d["name"] for d in self._inputs]
        # a static model's input shapes (none has -1 in its signature), else None
        self._static = None if any(-1 in d.get("shape_signature", d["shape"])
                                   for d in self._inputs) else \
            {d["name"]: tuple(int(n) for n in d["shape"]) for d in self._inputs}
        self.output_names = [d["name"] for d in self._outputs]
        self.version = getattr(ai_edge_litert, "__version__", None) or _dist_version()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BundleError(f"missing inputs {missing}; the model takes {self.input_names}")
        if self._per_op:
            self._last_feeds = feeds
        step = slice_step(feeds, self._static) if self._static else None
        if step:
            return run_in_slices(self.run, feeds, step)
        try:
            resized = False
            for d in self._inputs:
                shape = tuple(np.shape(feeds[d["name"]]))
                if shape != tuple(d["shape"]):
                    self.interp.resize_tensor_input(d["index"], list(shape))
                    resized = True
            if resized:
                self.interp.allocate_tensors()
                self._inputs = self.interp.get_input_details()
                self._outputs = self.interp.get_output_details()
            for d in self._inputs:
                self.interp.set_tensor(d["index"], np.ascontiguousarray(feeds[d["name"]],
                                                                        d["dtype"]))
            self.interp.invoke()
            return [self.interp.get_tensor(d["index"]).copy() for d in self._outputs]
        except Exception as e:
            raise BundleError(f"LiteRT run failed: {str(e).strip().splitlines()[-1][:300]}"
                              ) from e

    def op_profile(self) -> list[dict]:
        """Time per op type, each op timed alone on the last inputs run ([] if none)."""
        if not self._per_op or self._last_feeds is None:
            return []
        from layerwise.runtime.litert_ops import isolated_op_times

        return isolated_op_times(self._model, self._last_feeds, self.threads)


def _dist_version() -> str:
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:
        return "unknown"
