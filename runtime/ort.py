"""ONNX Runtime runner: load a model file, run named numpy inputs, profile per op."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from layerwise.base.errors import BundleError, TargetError


class OrtRunner:
    """One onnxruntime CPU session. `threads=0` lets onnxruntime choose (physical cores)."""

    name = "onnxruntime"

    def __init__(self, model: Path, threads: int = 0, per_op: bool = False,
                 power_mode: str | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise TargetError("onnxruntime is not installed: pip install onnxruntime") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        # power modes: worker threads spin between ops (fastest) or sleep (efficiency)
        self.power_mode = power_mode
        if power_mode is not None:
            spin = "0" if power_mode == "efficiency" else "1"
            opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
            opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
            if power_mode == "performance":
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._profile_dir = None
        if per_op:
            self._profile_dir = tempfile.mkdtemp(prefix="layerwise-ort-prof-")
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(self._profile_dir, "ort")
        try:
            self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BundleError(f"onnxruntime cannot load {model.name}: "
                              f"{str(e).splitlines()[0][:200]}; re-create the bundle") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.threads = threads or self.session.get_session_options().intra_op_num_threads \
            or os.cpu_count()
        self.version = ort.__version__

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BundleError(f"missing inputs {missing}; the model takes {self.input_names}")
        try:
            return self.session.run(None, {n: feeds[n] for n in self.input_names})
        except Exception as e:
            raise BundleError(f"onnxruntime run failed: {str(e).splitlines()[0][:300]}") from e

    def op_profile(self, by: str = "op_name") -> list[dict]:
        """Total time per op type (`by` "op_name"; "node": per node name) from onnxruntime's
        profiler, slowest first."""
        if self._profile_dir is None:
            return []
        path = self.session.end_profiling()
        events = json.loads(Path(path).read_text())
        per: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for ev in events:
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                op = (ev["name"].removesuffix("_kernel_time") if by == "node"
                      else ev.get("args", {}).get("op_name", "?"))
                per[op][0] += ev.get("dur", 0) / 1000.0
                per[op][1] += 1
        for f in Path(self._profile_dir).iterdir():
            f.unlink()
        os.rmdir(self._profile_dir)
        self._profile_dir = None
        total = sum(v[0] for v in per.values()) or 1.0
        return sorted(({"op": k, "total_ms": v[0], "calls": v[1], "share": v[0] / total}
                       for k, v in per.items()), key=lambda d: -d["total_ms"])
