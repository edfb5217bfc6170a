"""OpenVINO runner: compile for CPU with an inference-precision hint, run, per-op counters."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from layerwise.errors import BundleError, TargetError

# power modes as CPU plugin properties: latency hint with pinned threads on the big cores,
# or the efficient cores without pinning (on CPUs without E-cores the plugin uses them all)
POWER_CONFIG: dict[str, dict] = {
    "performance": {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": True,
                    "SCHEDULING_CORE_TYPE": "PCORE_ONLY"},
    "balanced": {"PERFORMANCE_HINT": "LATENCY", "SCHEDULING_CORE_TYPE": "ANY_CORE"},
    "efficiency": {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                   "SCHEDULING_CORE_TYPE": "ECORE_ONLY", "ENABLE_HYPER_THREADING": False},
}


class OpenVinoRunner:
    """One compiled model on the CPU plugin. `hint` is INFERENCE_PRECISION_HINT ("f32",
    "bf16"), or None for the plugin's default (bf16 on CPUs that have it)."""

    name = "openvino"

    def __init__(self, model: Path, threads: int = 0, per_op: bool = False,
                 hint: str | None = "f32", power_mode: str | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise TargetError("OpenVINO is not installed: pip install 'layerwise[openvino]'") from e
        core = ov.Core()
        config: dict = {"PERF_COUNT": per_op, **POWER_CONFIG.get(power_mode, {})}
        self.power_mode = power_mode
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(str(model), "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise BundleError(f"OpenVINO cannot load {model.name}: "
                              f"{str(e).splitlines()[0][:200]}; re-create the bundle") from e
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        self.output_names = [p.get_any_name() for p in self.compiled.outputs]
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        prec = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = prec.get_type_name() if hasattr(prec, "get_type_name") else str(prec)
        self.version = ov.get_version()
        self._per_op = per_op
        self._ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BundleError(f"missing inputs {missing}; the model takes {self.input_names}")
        try:
            self.request.infer({n: feeds[n] for n in self.input_names})
        except Exception as e:  # noqa: BLE001
            raise BundleError(f"OpenVINO run failed: {str(e).splitlines()[0][:300]}") from e
        if self._per_op:
            for info in self.request.get_profiling_info():
                rec = self._ops[info.node_type]
                rec[0] += info.real_time.total_seconds() * 1000.0
                rec[1] += 1
        return [np.array(self.request.get_output_tensor(i).data)
                for i in range(len(self.output_names))]

    def op_profile(self) -> list[dict]:
        """Total time per node type from OpenVINO's performance counters, slowest first."""
        total = sum(v[0] for v in self._ops.values()) or 1.0
        return sorted(({"op": k, "total_ms": v[0], "calls": v[1], "share": v[0] / total}
                       for k, v in self._ops.items()), key=lambda d: -d["total_ms"])
