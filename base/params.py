"""Parameters are declared once, as dataclass fields with help; the CLI and API both read them.

A field may declare `minimum=`: `check` refuses a smaller value with a LayerwiseError naming
the flag, so the CLI exits 2 with one line before any work starts."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from layerwise.base.errors import LayerwiseError


def opt(default: Any, help: str, *, minimum: float | None = None,
        **argparse_kwargs: Any) -> Any:
    """A dataclass field carrying its CLI help, an optional lower bound and optional argparse
    settings."""
    meta = {"help": help, **argparse_kwargs}
    if minimum is not None:
        meta["minimum"] = minimum
    return dataclasses.field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The CLI flag of field `name` (seq_len -> --seq-len)."""
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one --flag per field of dataclass `cls` (bools become store_true); a % in the help
    is shown as written (argparse would read it as a format)."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = dict(f.metadata)
        meta.pop("minimum", None)
        help_text = meta.pop("help", "").replace("%", "%%")
        if f.type in (bool, "bool"):
            parser.add_argument(flag(f.name), action="store_true", default=f.default,
                                help=help_text)
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(
            str(f.type), meta.pop("type", str))
        shown = "" if f.default is None else f" (default: {f.default})".replace("%", "%%")
        parser.add_argument(flag(f.name), type=kind, default=f.default, help=help_text + shown,
                            **meta)


def check(options: Any) -> None:
    """Refuse a field below its declared `minimum` (None means unset and passes)."""
    for f in dataclasses.fields(options):
        low = f.metadata.get("minimum")
        value = getattr(options, f.name)
        if low is None or value is None or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)) or value < low:
            if str(f.type) not in ("int", "int | None"):
                what = f"a number >= {low}"
            else:
                what = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise LayerwiseError(f"{flag(f.name)} must be {what}, got {value!r}")


def from_namespace(cls: type, ns: argparse.Namespace) -> Any:
    """Build dataclass `cls` from the parsed arguments that name its fields, checked."""
    options = cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)
                     if hasattr(ns, f.name)})
    check(options)
    return options
