"""Pick the runner for a target: each backend's own runtime, imported only when used."""

from __future__ import annotations

from pathlib import Path

from layerwise.base.errors import TargetError

# Runtime power settings (`profile --power-mode`): what each runner does with them is in its
# own module; runtimes with no such setting refuse them.
POWER_MODES = ("performance", "balanced", "efficiency")

# Extra runtime settings profiled side by side per target (the first is the verified one).
PROFILE_VARIANTS: dict[str, dict[str, dict]] = {
    "openvino": {"f32": {"hint": "f32"}, "plugin default": {"hint": None}},
}


def open_runner(target: str, model: Path, threads: int = 0, per_op: bool = False,
                power_mode: str | None = None, *, trust_native: bool = False, **settings):
    """A runner with `.run(feeds) -> list[np.ndarray]`, `.input_names`, `.output_names`.
    `trust_native` lets a runtime load a native library not compiled on this machine."""
    if power_mode is not None and power_mode not in POWER_MODES:
        raise TargetError(f"unknown --power-mode {power_mode!r}; use one of "
                          f"{', '.join(POWER_MODES)}")
    if target in ("onnx", "onnxruntime"):
        from layerwise.runtime.ort import OrtRunner

        return OrtRunner(model, threads=threads, per_op=per_op, power_mode=power_mode)
    if target == "openvino":
        from layerwise.runtime.openvino import OpenVinoRunner

        return OpenVinoRunner(model, threads=threads, per_op=per_op, power_mode=power_mode,
                              **settings)
    if power_mode is not None:
        raise TargetError(f"the {target} runtime has no power-mode setting; leave out "
                          "--power-mode (set the device's own governor or nvpmodel instead)")
    if target == "tflite":
        from layerwise.runtime.litert import LiteRTRunner

        return LiteRTRunner(model, threads=threads, per_op=per_op)
    if target == "tvm":
        from layerwise.runtime.tvm import TvmRunner

        return TvmRunner(model, threads=threads, per_op=per_op, trust_native=trust_native)
    raise TargetError(f"no runtime for target {target!r} in this install")
