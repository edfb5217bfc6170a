"""Pick the runner for a runtime by name: each backend's own runtime, imported only when used.

`RUNNERS` is the table: runtime name -> the runner class ("module:Class") and the settings
it takes beyond threads and per-op timing. A setting a runtime does not have is refused when
the user asked for it (power modes) and left out when it does not apply (trust in native
code, for runtimes that load no native code).
"""

from __future__ import annotations

from pathlib import Path

from layerwise.base.errors import TargetError

# Runtime power settings (`profile --power-mode`): what each runner does with them is in its
# own module; runtimes with no such setting refuse them.
POWER_MODES = ("performance", "balanced", "efficiency")

RUNNERS: dict[str, tuple[str, frozenset[str]]] = {
    "onnx": ("layerwise.runtime.ort:OrtRunner", frozenset({"power_mode"})),
    "openvino": ("layerwise.runtime.openvino:OpenVinoRunner",
                 frozenset({"power_mode", "hint", "specialize"})),
    "tflite": ("layerwise.runtime.litert:LiteRTRunner", frozenset()),
    "tvm": ("layerwise.runtime.tvm:TvmRunner", frozenset({"trust_native"})),
}
ALIASES = {"onnxruntime": "onnx"}

# Extra runtime settings profiled side by side per target (the first is the verified one).
PROFILE_VARIANTS: dict[str, dict[str, dict]] = {
    "openvino": {"f32": {"hint": "f32"}, "plugin default": {"hint": None}},
}


def open_runner(target: str, model: Path, threads: int = 0, per_op: bool = False,
                power_mode: str | None = None, *, trust_native: bool = False, **settings):
    """A runner with `.run(feeds) -> list[np.ndarray]`, `.input_names`, `.output_names`.
    `trust_native` lets a runtime load a native library not compiled on this machine."""
    from layerwise.base.registry import load

    if power_mode is not None and power_mode not in POWER_MODES:
        raise TargetError(f"unknown --power-mode {power_mode!r}; use one of "
                          f"{', '.join(POWER_MODES)}")
    name = ALIASES.get(target, target)
    if name not in RUNNERS:
        raise TargetError(f"no runtime for target {target!r} in this install; runtimes: "
                          f"{', '.join(RUNNERS)}")
    path, takes = RUNNERS[name]
    if power_mode is not None and "power_mode" not in takes:
        raise TargetError(f"the {target} runtime has no power-mode setting; leave out "
                          "--power-mode (set the device's own governor or nvpmodel instead)")
    given = {"power_mode": power_mode, "trust_native": trust_native, **settings}
    return load(path)(model, threads=threads, per_op=per_op,
                      **{k: v for k, v in given.items() if k in takes})
