"""Parameters are declared once, as dataclass fields with help; the CLI and API both read them."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def opt(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field carrying its CLI help (and optional argparse settings)."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_kwargs})


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one --flag per field of dataclass `cls` (bools become store_true); a % in the help
    is shown as written (argparse would read it as a format)."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = dict(f.metadata)
        flag = "--" + f.name.replace("_", "-")
        help_text = meta.pop("help", "").replace("%", "%%")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", default=f.default, help=help_text)
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(
            str(f.type), meta.pop("type", str))
        shown = "" if f.default is None else f" (default: {f.default})".replace("%", "%%")
        parser.add_argument(flag, type=kind, default=f.default, help=help_text + shown, **meta)


def from_namespace(cls: type, ns: argparse.Namespace):
    """Build dataclass `cls` from the parsed arguments that name its fields."""
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)})
