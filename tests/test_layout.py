"""The rooms of DESIGN.md as data: every module's imports (read with ast, nothing run),
checked against what its room may import, and the module graph checked for cycles."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

ROOMS = ("base", "compiler", "analysis", "targets", "runtime", "devices", "cpp_ext")
# room -> the rooms it may import (itself always); the front door, `layerwise/`, may import all.
MAY_IMPORT: dict[str, set[str]] = {
    "base": set(),
    "cpp_ext": {"base"},
    "compiler": {"base", "cpp_ext"},
    "analysis": {"base", "compiler", "cpp_ext"},
    "runtime": {"base"},
    # the latency model (devices/latency) calibrates on the runtime
    "devices": {"base", "runtime"},
    # cpp_ext: the calibration kernels (histograms, KL search) of the INT8 recipes
    "targets": {"base", "compiler", "runtime", "devices", "cpp_ext"},
}
# third-party packages a room must never import (the runtime installs on a device; device
# profiles are data); the latency model (devices/latency) builds its calibration set in torch
NEVER: dict[str, set[str]] = {"runtime": {"torch"}, "base": {"torch", "numpy"},
                              "devices": {"torch"}}
EXEMPT_FROM_NEVER = ("layerwise.devices.latency",)


def modules() -> dict[str, Path]:
    """Dotted name (layerwise.ROOM.x) -> file, for the front and every room."""
    out = {}
    for room in ("layerwise", *ROOMS):
        for p in sorted((ROOT / room).rglob("*.py")):
            rel = p.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts if parts[0] == "layerwise" else ["layerwise", *parts])
            out[name] = p
    return out


def room_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "layerwise"


def imports(path: Path, name: str, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(layerwise modules, top-level third-party packages) that `path` imports anywhere,
    including inside functions and TYPE_CHECKING blocks."""
    mods, packages = set(), set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                target = full if full in known else base
                (mods if target.startswith("layerwise") else packages).add(
                    target if target.startswith("layerwise") else target.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                (mods if alias.name.startswith("layerwise") else packages).add(
                    alias.name if alias.name.startswith("layerwise") else
                    alias.name.split(".")[0])
    return {m for m in mods if m in known}, packages


def test_rooms_import_only_what_they_may():
    known = modules()
    bad = []
    for name, path in known.items():
        room = room_of(name)
        mods, packages = imports(path, name, known)
        for target in mods:
            other = room_of(target)
            if room not in ("layerwise", other) and other not in MAY_IMPORT[room]:
                bad.append(f"{name} -> {target}")
        if not name.startswith(EXEMPT_FROM_NEVER):
            bad += [f"{name} -> {p}" for p in packages & NEVER.get(room, set())]
    assert bad == [], "\n".join(sorted(bad))


def test_no_import_cycles():
    """Module-level cycles (package __init__ faces excluded, as they re-export)."""
    known = modules()
    graph = {n: {t for t in imports(p, n, known)[0]
                 if t != n and known[t].name != "__init__.py"}
             for n, p in known.items() if p.name != "__init__.py"}
    state: dict[str, int] = {}
    cycles = []

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycles.append(" -> ".join([*stack[stack.index(v):], v]))
            elif not state.get(v):
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for n in sorted(graph):
        if not state.get(n):
            visit(n, [])
    assert cycles == [], "\n".join(cycles)
