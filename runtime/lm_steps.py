"""One decoder step per runtime, holding the KV cache between calls: `reset()` starts a new
sequence, `step(ids [B, S]) -> logits [B, S, V]` appends tokens. onnxruntime: the cache is
the step graph's past inputs and present outputs, fed back here. OpenVINO: the cache lives in
the stateful model's state variables (targets/openvino_decoder.py). LiteRT: a fixed-size cache
over two signatures (runtime/lm_litert.py); TVM: the same over two Relax VM
functions (runtime/lm_tvm.py). Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layerwise.base.errors import BundleError
from layerwise.runtime.bundle import RECREATE
from layerwise.runtime.lm_litert import LiteRtStep
from layerwise.runtime.lm_tvm import TvmStep


class OrtStep:
    """The onnx step graph on onnxruntime; `past` is the cache (2 arrays per layer)."""

    def __init__(self, model_file: Path, generation: dict, threads: int = 0,
                 per_op: bool = False) -> None:
        from layerwise.runtime.ort import OrtRunner

        self.config = generation
        self.runner = OrtRunner(model_file, threads=threads, per_op=per_op)
        expected = 2 + 2 * generation["layers"]
        if len(self.runner.input_names) != expected:
            raise BundleError(f"{model_file}: the model takes {len(self.runner.input_names)} "
                              f"inputs, not the {expected} of a {generation['layers']}-layer "
                              f"cache; {RECREATE}")
        self.reset()

    def reset(self, batch: int = 1) -> None:
        g = self.config
        self.past = [np.zeros((batch, g["kv_heads"], 0, g["head_dim"]), np.float32)
                     for _ in range(2 * g["layers"])]

    @property
    def length(self) -> int:
        return int(self.past[0].shape[2])

    def step(self, ids: np.ndarray) -> np.ndarray:
        mask = np.ones((ids.shape[0], self.length + ids.shape[1]), np.int64)
        out = self.runner.run(dict(zip(self.runner.input_names,
                                       [ids.astype(np.int64), mask, *self.past])))
        self.past = out[1:]
        return out[0]


class OvStep:
    """The stateful OpenVINO model: inputs input_ids and attention_mask, the cache in state."""

    def __init__(self, model_file: Path, generation: dict, threads: int = 0,
                 per_op: bool = False) -> None:
        from layerwise.runtime.openvino import OpenVinoRunner

        self.config = generation
        self.runner = OpenVinoRunner(model_file, threads=threads, per_op=per_op, hint="f32",
                                     specialize=False)
        states = len(self.runner.request.query_state())
        if sorted(self.runner.input_names) != ["attention_mask", "input_ids"] \
                or states != 2 * generation["layers"]:
            raise BundleError(f"{model_file}: not a stateful decoder with "
                              f"{2 * generation['layers']} cache states (inputs "
                              f"{self.runner.input_names}, {states} states); {RECREATE}")
        self.reset()

    def reset(self, batch: int = 1) -> None:
        self.runner.request.reset_state()
        self.length = 0

    def step(self, ids: np.ndarray) -> np.ndarray:
        mask = np.ones((ids.shape[0], self.length + ids.shape[1]), np.int64)
        logits = self.runner.run({"input_ids": ids.astype(np.int64), "attention_mask": mask})[0]
        self.length += ids.shape[1]
        return logits


# a tensorrt bundle's onnx runs on onnxruntime where TensorRT is absent (its verification)
STEPS = {"onnx": OrtStep, "openvino": OvStep, "tensorrt": OrtStep, "tflite": LiteRtStep,
         "tvm": TvmStep}
