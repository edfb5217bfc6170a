"""This machine's CPU features, from /proc/cpuinfo (standard library only, read once)."""

from __future__ import annotations

import functools
import platform


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo, read once); empty where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((ln.split(":", 1)[1].split() for ln in f
                                   if ln.startswith("flags")), []))
    except OSError:
        return frozenset()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def has_vnni() -> bool:
    """AVX512-VNNI or AVX-VNNI: int8 dot products accumulate in int32 in one instruction."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})
