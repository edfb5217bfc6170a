"""OpenVINO runner: compile for CPU with an inference-precision hint, run, per-op counters.

Shape specialisation: a bundle keeps its batch dimension dynamic, but the CPU plugin runs a
dynamic-shape model through its shape-agnostic path (shape inference and memory planning on
every call). As OpenVINO's guide recommends for known shapes, the runner compiles the model
reshaped to each input shape it is fed (up to MAX_SHAPES of them; later shapes run on the
dynamic model). The static copy gives the same outputs and skips the per-call shape work.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from layerwise.base.errors import BundleError, TargetError

# power modes as CPU plugin properties: latency hint with pinned threads on the big cores,
# or the efficient cores without pinning (on CPUs without E-cores the plugin uses them all)
POWER_CONFIG: dict[str, dict] = {
    "performance": {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": True,
                    "SCHEDULING_CORE_TYPE": "PCORE_ONLY"},
    "balanced": {"PERFORMANCE_HINT": "LATENCY", "SCHEDULING_CORE_TYPE": "ANY_CORE"},
    "efficiency": {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                   "SCHEDULING_CORE_TYPE": "ECORE_ONLY", "ENABLE_HYPER_THREADING": False},
}

MAX_SHAPES = 4  # statically compiled input shapes kept per runner


class OpenVinoRunner:
    """One compiled model on the CPU plugin. `hint` is INFERENCE_PRECISION_HINT ("f32",
    "bf16"), or None for the plugin's default (bf16 on CPUs that have it); `specialize`
    compiles a static-shape copy per input shape fed (when the model has dynamic dims)."""

    name = "openvino"

    def __init__(self, model: Path, threads: int = 0, per_op: bool = False, *,
                 hint: str | None = "f32", power_mode: str | None = None,
                 specialize: bool = True) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise TargetError("OpenVINO is not installed: pip install 'layerwise[openvino]'") from e
        self._ov, self._core = ov, ov.Core()
        config: dict = {"PERF_COUNT": per_op, **POWER_CONFIG.get(power_mode, {})}
        self.power_mode = power_mode
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._config = config
        try:
            self._model = self._core.read_model(str(model))
            self.compiled = self._core.compile_model(self._model, "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise BundleError(f"OpenVINO cannot load {model.name}: "
                              f"{str(e).splitlines()[0][:200]}; re-create the bundle") from e
        self.request = self.compiled.create_infer_request()
        self._dynamic = (self.compiled, self.request)
        # the saved model's names: compiling may add tensor names to a port (GPT-2's inputs
        # gained '33', '41'), and get_any_name() then picks another one; fed by port index
        self.input_names = [p.get_any_name() for p in self._model.inputs]
        self.output_names = [p.get_any_name() for p in self._model.outputs]
        self._shapes = {p.get_any_name(): p.get_partial_shape() for p in self._model.inputs}
        self.specialize = specialize and any(s.is_dynamic for s in self._shapes.values())
        self._static: dict[tuple, tuple] = {}  # input shapes -> (compiled, request)
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        prec = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = prec.get_type_name() if hasattr(prec, "get_type_name") else str(prec)
        self.version = ov.get_version()
        self._per_op = per_op
        self._ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        self._nodes: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def _request_for(self, feeds: dict[str, np.ndarray]):
        """The infer request compiled for these feeds' shapes (the dynamic one if the model
        is static, specialisation is off, or MAX_SHAPES shapes are compiled already). Shapes
        are checked against the model once, when first seen."""
        key = tuple(tuple(feeds[n].shape) for n in self.input_names)
        hit = self._static.get(key)
        if hit is not None:
            return hit
        for name, shape in zip(self.input_names, key):
            if not self._shapes[name].compatible(self._ov.PartialShape(list(shape))):
                raise BundleError(f"input {name} has shape {list(shape)}; the model takes "
                                  f"{self._shapes[name]}")
        if not self.specialize or len(self._static) >= MAX_SHAPES:
            return self._dynamic
        model = self._model.clone()
        model.reshape(dict(zip(self.input_names, key)))
        compiled = self._core.compile_model(model, "CPU", self._config)
        self._static[key] = (compiled, compiled.create_infer_request())
        return self._static[key]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BundleError(f"missing inputs {missing}; the model takes {self.input_names}")
        self.compiled, self.request = self._request_for(feeds)
        try:
            self.request.infer({i: feeds[n] for i, n in enumerate(self.input_names)})
        except Exception as e:  # noqa: BLE001
            raise BundleError(f"OpenVINO run failed: {str(e).splitlines()[0][:300]}") from e
        if self._per_op:
            for info in self.request.get_profiling_info():
                for rec in (self._ops[info.node_type], self._nodes[info.node_name]):
                    rec[0] += info.real_time.total_seconds() * 1000.0
                    rec[1] += 1
        return [np.array(self.request.get_output_tensor(i).data)
                for i in range(len(self.output_names))]

    def op_profile(self, by: str = "op_name") -> list[dict]:
        """Total time per node type (`by` "node": per node name) from OpenVINO's performance
        counters, slowest first."""
        table = self._nodes if by == "node" else self._ops
        total = sum(v[0] for v in table.values()) or 1.0
        return sorted(({"op": k, "total_ms": v[0], "calls": v[1], "share": v[0] / total}
                       for k, v in table.items()), key=lambda d: -d["total_ms"])
