"""Every command's --help prints its options (a % in a help text once made argparse raise)."""

from __future__ import annotations

import argparse

import pytest

from layerwise.cli import _parser


def _commands() -> list[str]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _commands())
def test_help_lists_the_options(command, capsys):
    with pytest.raises(SystemExit) as stop:
        _parser().parse_args([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: layerwise {command}") and "--" in out


def test_percent_in_help_is_shown_as_written(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["compile", "--help"])
    assert "e.g. 1%: of fidelity" in " ".join(capsys.readouterr().out.split())
