"""Targets room: one module per backend, each with `INFO` and `emit(ir, out_dir, opts)`.

Backends are imported only when used, so a missing SDK costs nothing until it is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from layerwise.base.errors import LayerwiseError, TargetError
from layerwise.base.recipe import QuantRecipe, for_precision
from layerwise.base.registry import TARGET_NAMES


@dataclass(frozen=True)
class TargetInfo:
    """What a backend declares: precisions, required legalization passes, its pip extra and
    the quantization recipe its static INT8 kernels expect (None: it has none of its own)."""

    name: str
    runtime: str
    precisions: tuple[str, ...]
    extra: str | None
    legalize: tuple[str, ...] = ()
    recipe: QuantRecipe | None = None


TARGETS: dict[str, str] = {name: f"layerwise.targets.{name}" for name in TARGET_NAMES}


def get_target(name: str):
    """The target module for `name` (has INFO and emit)."""
    from layerwise.base.registry import find

    return find("layerwise.targets", name, TARGETS, TargetError, "target")


def recipe_for(target: str, precision: str = "int8", **overrides) -> QuantRecipe:
    """The target's recipe for `precision` with user overrides (e.g. calibration='entropy')."""
    recipe = get_target(target).INFO.recipe
    if recipe is None:
        with_one = [n for n in TARGETS if n != target and get_target(n).INFO.recipe]
        raise LayerwiseError(f"no quantization recipe for target {target!r}; targets with one: "
                             f"{', '.join(sorted(with_one))}")
    return for_precision(recipe, precision, **overrides)


def quant_recipe(device, precision: str = "int8") -> QuantRecipe:
    """The QuantRecipe for `device` (a name or DeviceProfile) at `precision`: its default
    target's recipe (TVM, which has none, takes the onnx one) with the device's [quant]
    overrides on top."""
    from layerwise.devices.loader import DeviceProfile, load_device

    profile = device if isinstance(device, DeviceProfile) else load_device(device)
    target = profile.target if get_target(profile.target).INFO.recipe else "onnx"
    return replace(recipe_for(target, precision), **dict(profile.quant.overrides))
