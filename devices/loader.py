"""Device profiles: one TOML file per device, loaded into a frozen `DeviceProfile`.

Built-in profiles live in `layerwise/devices/profiles/*.toml` (package data). Third-party
packages add devices through the `layerwise.devices` entry-point group; an entry point names
a TOML path, a dict with the same fields, or a callable returning either. Standard library only
(plus layerwise.base, which is standard library itself).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from layerwise.base import registry as plugins
from layerwise.base.errors import LayerwiseError
from layerwise.base.recipe import recipe_keys
from layerwise.base.registry import TARGET_NAMES

GROUP = "layerwise.devices"
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-dynamic", "int8-weight", "int4-weight")
ACTIVATION_DTYPES = ("int8", "uint8")
CALIBRATIONS = ("minmax", "mean_minmax", "percentile", "entropy", "mse")
# [quant] keys that describe the device rather than override a QuantRecipe field
DEVICE_QUANT_KEYS = ("activation_dtype", "full_integer")

# field -> (type check, required); numbers accept int or float
_NUM = (int, float)
_FIELDS: dict[str, tuple[Any, bool]] = {
    "name": (str, True),
    "description": (str, True),
    "source": ((str, list), True),
    "target": (str, True),
    "precisions": (list, True),
    "quant": (dict, True),
    "op_overhead_us": (_NUM, True),
    "memory_gb": (_NUM, False),
    "bandwidth_gbs": (_NUM, False),
    "peak_gops": (dict, False),
    "measured": (bool, False),
    "host_link_gbs": (_NUM, False),
    "param_cache_mb": (_NUM, False),
    "invoke_overhead_us": (_NUM, False),
    "ops": (dict, False),
    "efficiency": (dict, False),
}


@dataclass(frozen=True, slots=True)
class QuantSpec:
    """The INT8 recipe a device wants: recipe overrides plus device-side facts."""

    activation_dtype: str  # int8 | uint8
    full_integer: bool  # every op in int8, no float fallback (Coral)
    overrides: tuple[tuple[str, Any], ...]  # QuantRecipe field -> value

    def as_dict(self) -> dict[str, Any]:
        return {"activation_dtype": self.activation_dtype, "full_integer": self.full_integer,
                **dict(self.overrides)}


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """One device. Peaks are GOP/s per precision (GFLOP/s for float, GOP/s for int8)."""

    name: str
    description: str
    source: tuple[str, ...]
    target: str
    precisions: tuple[str, ...]
    quant: QuantSpec
    op_overhead_us: float
    memory_gb: float | None = None
    bandwidth_gbs: float | None = None  # None or 0: no memory roofline (on-chip activations)
    peak_gops: tuple[tuple[str, float], ...] = ()
    measured: bool = False  # peaks come from calibrating this machine (`host`)
    host_link_gbs: float | None = None  # USB/PCIe link for inputs, outputs, uncached weights
    param_cache_mb: float | None = None
    invoke_overhead_us: float = 0.0
    supported_ops: tuple[str, ...] = ()  # empty: no op limit declared
    efficiency: tuple[tuple[str, float], ...] = ()  # per-op-kind compute efficiency overrides
    path: str = field(default="", compare=False)

    def peak(self, precision: str) -> float | None:
        return dict(self.peak_gops).get(precision)

    @property
    def default_precision(self) -> str:
        return self.precisions[0]


def _builtin_dir():
    return files("layerwise.devices") / "profiles"


def _builtin() -> dict[str, Any]:
    """name -> Traversable of every built-in TOML (file stem is the device name)."""
    return {p.name.removesuffix(".toml"): p for p in _builtin_dir().iterdir()
            if p.name.endswith(".toml")}


def _fail(where: str, what: str) -> LayerwiseError:
    return LayerwiseError(f"device profile {where}: {what}")


def validate(data: dict, where: str) -> DeviceProfile:
    """A DeviceProfile from parsed TOML `data`; a bad or missing field raises a one-line
    LayerwiseError naming `where` (the file) and the field."""
    for key, (typ, required) in _FIELDS.items():
        if key not in data:
            if required:
                raise _fail(where, f"missing field '{key}'")
            continue
        ok = isinstance(data[key], typ) and not (typ is _NUM and isinstance(data[key], bool))
        if not ok:
            raise _fail(where, f"field '{key}' has the wrong type ({type(data[key]).__name__})")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise _fail(where, f"unknown field '{unknown[0]}'; known fields: {', '.join(_FIELDS)}")
    targets = (*TARGET_NAMES, *plugins.plugins("layerwise.targets"))
    if data["target"] not in targets:
        raise _fail(where, f"field 'target' is {data['target']!r}; use one of "
                    f"{', '.join(targets)}")
    precisions = tuple(data["precisions"])
    bad = [p for p in precisions if p not in PRECISIONS]
    if not precisions or bad:
        raise _fail(where, f"field 'precisions' must list some of {', '.join(PRECISIONS)}")
    peaks = data.get("peak_gops", {})
    for prec, value in peaks.items():
        if prec not in PRECISIONS or not isinstance(value, _NUM) or value <= 0:
            raise _fail(where, f"field 'peak_gops.{prec}' must be a positive number for one of "
                        f"{', '.join(PRECISIONS)}")
    if not data.get("measured"):
        missing = [p for p in precisions if p not in peaks]
        if missing:
            raise _fail(where, f"missing field 'peak_gops.{missing[0]}' (a peak for every "
                        "precision, or measured = true)")
        if "bandwidth_gbs" not in data:
            raise _fail(where, "missing field 'bandwidth_gbs' (0 when activations stay on chip)")
    quant = _quant(data["quant"], where)
    ops = data.get("ops", {})
    supported = ops.get("supported", [])
    if not isinstance(supported, list) or not all(isinstance(o, str) for o in supported):
        raise _fail(where, "field 'ops.supported' must be a list of operator names")
    eff = data.get("efficiency", {})
    for kind, value in eff.items():
        if not isinstance(value, _NUM) or not 0 < value <= 1.5:
            raise _fail(where, f"field 'efficiency.{kind}' must be a number in (0, 1.5]")
    source = (data["source"],) if isinstance(data["source"], str) else tuple(data["source"])
    return DeviceProfile(
        name=data["name"], description=data["description"], source=source,
        target=data["target"], precisions=precisions, quant=quant,
        op_overhead_us=float(data["op_overhead_us"]),
        memory_gb=_opt_float(data.get("memory_gb")),
        bandwidth_gbs=_opt_float(data.get("bandwidth_gbs")),
        peak_gops=tuple((k, float(v)) for k, v in peaks.items()),
        measured=bool(data.get("measured", False)),
        host_link_gbs=_opt_float(data.get("host_link_gbs")),
        param_cache_mb=_opt_float(data.get("param_cache_mb")),
        invoke_overhead_us=float(data.get("invoke_overhead_us", 0.0)),
        supported_ops=tuple(supported),
        efficiency=tuple((k, float(v)) for k, v in eff.items()),
        path=where,
    )


def _opt_float(v) -> float | None:
    return None if v is None else float(v)


def _quant(q: dict, where: str) -> QuantSpec:
    for key in DEVICE_QUANT_KEYS:
        if key not in q:
            raise _fail(where, f"missing field 'quant.{key}'")
    keys = recipe_keys()
    unknown = sorted(set(q) - set(keys) - set(DEVICE_QUANT_KEYS))
    if unknown:
        raise _fail(where, f"unknown field 'quant.{unknown[0]}'; known: "
                    f"{', '.join(DEVICE_QUANT_KEYS + keys)}")
    if q["activation_dtype"] not in ACTIVATION_DTYPES:
        raise _fail(where, "field 'quant.activation_dtype' must be int8 or uint8")
    if q.get("symmetric_activations") and q["activation_dtype"] != "int8":
        raise _fail(where, "field 'quant.symmetric_activations' needs activation_dtype = int8")
    if "calibration" in q and q["calibration"] not in CALIBRATIONS:
        raise _fail(where, f"field 'quant.calibration' must be one of {', '.join(CALIBRATIONS)}")
    overrides = tuple((k, tuple(v) if isinstance(v, list) else v)
                      for k, v in q.items() if k in keys)
    return QuantSpec(q["activation_dtype"], bool(q["full_integer"]), overrides)


def parse_toml(text: str, where: str) -> DeviceProfile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _fail(where, f"not valid TOML ({e})") from e
    return validate(data, where)


def load_file(path: str | Path) -> DeviceProfile:
    """A profile from a TOML file (any path)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise LayerwiseError(f"cannot read device profile {p}: {e.strerror}") from e
    return parse_toml(text, str(p))


def _from_plugin(name: str, value: str) -> DeviceProfile:
    where = f"{name!r} (entry point {value})"
    try:
        obj = plugins.load(value)
    except (ImportError, AttributeError) as e:
        raise LayerwiseError(f"device plugin {where} cannot be loaded: {e}") from e
    if callable(obj):
        obj = obj()
    if isinstance(obj, dict):
        profile = validate(obj, where)
    elif isinstance(obj, (str, Path)):
        profile = load_file(obj)
    else:
        raise LayerwiseError(f"device plugin {where} gave a {type(obj).__name__}; it must give "
                             "a TOML path or a dict of profile fields")
    if profile.name != name:
        raise LayerwiseError(f"device plugin {where} describes {profile.name!r}; the entry "
                             "point name and the profile's name must match")
    return profile


def list_devices() -> list[str]:
    """Names of all devices: built in, then those of installed plugins."""
    builtin = _builtin()
    return sorted(builtin) + sorted(n for n in plugins.plugins(GROUP) if n not in builtin)


def load_device(name: str) -> DeviceProfile:
    """The profile called `name` (built in first, then plugins); unknown names raise a
    LayerwiseError listing the known ones."""
    builtin = _builtin()
    if name in builtin:
        profile = parse_toml(builtin[name].read_text(), str(builtin[name]))
        if profile.name != name:
            raise LayerwiseError(f"device profile {builtin[name]}: field 'name' is "
                                 f"{profile.name!r}; it must match the file name")
        return profile
    found = plugins.plugins(GROUP)
    if name in found:
        return _from_plugin(name, found[name])
    raise LayerwiseError(f"unknown device {name!r}; known devices: {', '.join(list_devices())}")
