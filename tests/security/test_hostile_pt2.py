"""Hostile `.pt2` archives: refused with one line (exit 2) before any of their code runs."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from layerwise.base.errors import SourceError
from layerwise.compiler.load_program import check_expr, check_target, load_program
from tests.fixtures.hostile import HOSTILE_ARCHIVES, guard_code, plain_archive
from tests.layerwise.test_cli_errors import assert_user_error, run_cli

REFUSED = sorted(set(HOSTILE_ARCHIVES) - {"guard_code"})


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return plain_archive(tmp_path_factory.mktemp("pt2") / "plain.pt2")


@pytest.mark.parametrize("case", REFUSED)
def test_loader_refuses_before_running_anything(plain, tmp_path, case):
    canary = tmp_path / "canary"
    hostile = HOSTILE_ARCHIVES[case](plain, tmp_path / f"{case}.pt2", canary)
    with pytest.raises(SourceError, match="refused to load"):
        load_program(hostile)
    assert not canary.exists()


@pytest.mark.parametrize("case", ["pickled_weight", "pickled_sample_inputs", "sympy_eval"])
@pytest.mark.parametrize("command", ["inspect", "compile"])
def test_cli_refuses_the_archives_torch_would_run(plain, tmp_path, case, command):
    """These three create the canary under a bare torch.export.load (checked in
    test_the_hostile_archives_are_real)."""
    canary = tmp_path / "canary"
    hostile = HOSTILE_ARCHIVES[case](plain, tmp_path / f"{case}.pt2", canary)
    extra = ["--out", str(tmp_path / "b")] if command == "compile" else []
    proc = run_cli(command, str(hostile), *extra)
    assert_user_error(proc, "refused to load", "torch.export.save")
    assert not canary.exists()
    assert not (tmp_path / "b").exists()


def test_the_hostile_archives_are_real(plain, tmp_path):
    """Trusted by torch.export.load (and module()), three archives run their payload."""
    import torch

    ran = []
    for case in ("pickled_weight", "pickled_sample_inputs", "sympy_eval", "guard_code"):
        canary = tmp_path / f"canary_{case}"
        f = HOSTILE_ARCHIVES[case](plain, tmp_path / f"{case}.pt2", canary)
        # the payload breaks the load after it ran
        with contextlib.suppress(Exception):
            torch.export.load(str(f)).module()(torch.randn(2, 8))
        ran.append(canary.exists())
    assert ran == [True, True, True, True]


def test_guard_code_is_never_executed(plain, tmp_path):
    """Stored guards are Python that module() exec's; the loader drops them and the program
    still compiles and verifies."""
    canary = tmp_path / "canary"
    hostile = guard_code(plain, tmp_path / "guarded.pt2", canary)
    proc = run_cli("compile", str(hostile), "--target", "onnx", "--out", str(tmp_path / "b"),
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b" / "manifest.json").is_file()
    assert not canary.exists()


def test_plain_positional_export_compiles(plain, tmp_path):
    """torch.export.save(torch.export.export(m, (x,)), f): inputs by position, batch dynamic."""
    import json

    proc = run_cli("compile", str(plain), "--target", "onnx", "--out", str(tmp_path / "b"),
                   "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["verification"]["passed"]
    assert result["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}]


def test_not_a_zip_is_one_line(tmp_path):
    bad = tmp_path / "garbage.pt2"
    bad.write_bytes(b"\x00\x01 not a zip archive" * 10)
    proc = run_cli("inspect", str(bad))
    assert_user_error(proc, "not a torch.export archive", "torch.export.save")
    noise = [ln for ln in proc.stderr.splitlines() if not ln.startswith(("…", "layerwise:"))]
    assert noise == [], proc.stderr


@pytest.mark.parametrize("expr, ok", [
    ("Symbol('s77', positive=True, integer=True)", True),
    ("Mul(Integer(2), Pow(Symbol('s53', positive=True, integer=True), Integer(2)))", True),
    ("FloorDiv(s0, 2) + Max(1, s1)", True),
    ("__import__('os').system('id')", False),
    ("exec(chr(112)+chr(114))", False),
    ("Symbol('s0').__class__", False),
    ("Symbol('__init__')", False),
    ("Lambda(s0, s0)", False),
    ("s0[0]", False),
    ('Symbol("s0")', False),
])
def test_shape_expressions(expr, ok):
    import torch.utils._sympy.functions as fns

    from layerwise.compiler.load_program import SYMPY_CALLS

    assert (check_expr(expr, SYMPY_CALLS | frozenset(fns.__all__)) is None) == ok


@pytest.mark.parametrize("target, ok", [
    ("torch.ops.aten.linear.default", True),
    ("torch.ops.higher_order.cond", True),
    ("_operator.getitem", True),
    ("math.floor", True),
    ("torch.sym_max", True),
    ("torch.os.system", False),
    ("torch.ops.mylib.evil.default", False),
    ("_operator.attrgetter", False),
    ("builtins.exec", False),
    ("#custom:op", False),
])
def test_node_targets(target, ok):
    assert check_target(target) == ok
