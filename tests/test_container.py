"""The container images (Dockerfile, .dockerignore, scripts/image_install.sh), tested without a
container engine: both targets exist, RUN the install script and start what they expose; and
the builder's and the runtime target's RUN lines, run as written in a fresh venv on a copy of
the build context (.dockerignore applied), give a torch-free device runtime whose CLI runs a
bundle and whose agent profiles one."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURES, ROOT

SCRIPT = "scripts/image_install.sh"
SRC = "/src"  # the builder's WORKDIR, which the targets mount to install from
WHEEL = f"{SRC}/dist/layerwise-*.whl"
PORTS = {"compile": 8600, "runtime": 8700}


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each Dockerfile instruction; continuation lines joined, comments
    (also those inside a continued instruction) dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        keyword, _, args = (buf + stripped).partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued instruction"
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions, starting with ("FROM", parent image or stage)."""
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, args in instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args, re.IGNORECASE)
            assert m, f"unnamed stage: FROM {args}"
            current = out.setdefault(m[2], [("FROM", m[1])])
        elif current is not None:  # ARGs before the first FROM belong to no stage
            current.append((keyword, args))
    return out


def runs(stage: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(flags, shell command) of each RUN: `--mount=...` and other flags split off."""
    out = []
    for keyword, args in stage:
        if keyword == "RUN":
            m = re.fullmatch(r"((?:--\S+\s+)*)(.*)", args, re.DOTALL)
            out.append((m[1], m[2]))
    return out


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [args for kw, args in stage if kw == keyword]
    assert values, f"no {keyword}"
    return values[-1]


def dockerignore() -> Callable[[str], bool]:
    """Whether .dockerignore leaves a path (relative, POSIX) out of the build context: a
    pattern matches it or one of its parent folders (`**` spans any number of folders)."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip().strip("/").split("/") for p in lines
                if p.strip() and not p.lstrip().startswith("#")]
    assert not any(p[0].startswith("!") for p in patterns), "exceptions are not emulated here"

    def match(pat: list[str], parts: list[str]) -> bool:
        if not pat:
            return not parts
        if pat[0] == "**":
            return any(match(pat[1:], parts[i:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], pat[0]) and match(pat[1:],
                                                                               parts[1:])

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        return any(match(p, parts[:i]) for p in patterns for i in range(1, len(parts) + 1))

    return excluded


def subcommands() -> dict[str, argparse.ArgumentParser]:
    from layerwise.cli import _parser

    parser = _parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_both_targets_install_with_the_script_and_start_what_they_expose():
    st = stages()
    assert {"builder", "compile", "runtime"} <= set(st)
    builder = st["builder"]
    assert last(builder, "WORKDIR") == SRC and ("COPY", ". .") in builder
    assert any("pip wheel" in cmd and "--no-deps" in cmd and "--wheel-dir dist ." in cmd
               for _, cmd in runs(builder))
    for target, port in PORTS.items():
        stage = st[target]
        installs = [(flags, cmd) for flags, cmd in runs(stage) if SCRIPT in cmd]
        assert len(installs) == 1, f"{target}: one RUN of {SCRIPT}"
        flags, cmd = installs[0]
        assert cmd == f"bash {SRC}/{SCRIPT} {target} {WHEEL}"
        assert f"--mount=type=bind,from=builder,source={SRC},target={SRC}" in flags
        assert int(last(stage, "USER").split(":")[0]) > 0  # numeric: runAsNonRoot can check
        assert last(stage, "EXPOSE") == str(port)
        cmd_line = json.loads(last(stage, "CMD"))  # exec form: the server gets SIGTERM
        assert cmd_line[0] == "layerwise"
        args = subcommands()[cmd_line[1]].parse_args(cmd_line[2:])  # the CLI's own parser
        assert (args.host, args.port) == ("0.0.0.0", port)
        assert st[target][0] == ("FROM", "base")
    assert last(st["base"], "VOLUME") == last(st["base"], "WORKDIR") == "/data"
    assert "LAYERWISE_DB=/data/" in last(st["base"], "ENV")
    # the runtime image's lines (and what it is built on) name no torch
    assert not any("torch" in args for _, args in st["runtime"] + st["base"])
    assert "TORCH_INDEX_URL" in last(st["compile"], "ARG")


def test_the_build_context_holds_the_package_and_nothing_built():
    excluded = dockerignore()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = project["tool"]["scikit-build"]["wheel"]["packages"].values()
    needed = ["pyproject.toml", "CMakeLists.txt", project["project"]["readme"], SCRIPT,
              *folders, "cpp_ext/src/module.cpp"]
    assert not [p for p in needed if excluded(p)]
    assert all(excluded(p) for p in (".venv", ".git", "build/x/y.o", "out/b/manifest.json",
                                     "runtime/__pycache__/x.pyc", "cpp_ext/_native.so"))


@pytest.mark.slow
def test_runtime_image_install_in_a_fresh_venv(tmp_path, bundles):
    from layerwise.runtime import open_bundle
    from layerwise.runtime.remote import agent_info, remote_profile
    from layerwise.runtime.run import run_bundle
    from tests.fixtures.agent import Agent, write_token

    bundle, _ = bundles(f"{FIXTURES}:lstm_classifier")
    excluded = dockerignore()
    context = tmp_path / "src"  # the build context, as the builder's COPY . . leaves it
    shutil.copytree(ROOT, context, symlinks=True, ignore=lambda d, names: {
        n for n in names if excluded((Path(d) / n).relative_to(ROOT).as_posix())})
    venv = tmp_path / "venv"  # stands for the image's python (no torch, nothing else)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    st = stages()
    # the builder's wheel, then the runtime target's install: their RUN lines as written
    workdir = tmp_path / "data"  # the runtime target's WORKDIR, outside the source tree
    workdir.mkdir()
    lines = [(cmd, context) for _, cmd in runs(st["builder"]) if "pip wheel" in cmd]
    lines += [(cmd.replace(SRC, str(context)), workdir) for _, cmd in runs(st["runtime"])
              if SCRIPT in cmd]
    for line, cwd in lines:
        proc = subprocess.run(["sh", "-c", line], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=1200, check=False)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([bin_dir / "layerwise", *args], capture_output=True, text=True,
                              check=False, timeout=300, cwd=tmp_path, env=env)

    no_torch = subprocess.run([bin_dir / "python", "-c", "import torch"], capture_output=True,
                              text=True, check=False, timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    assert cli("agent", "--help").returncode == 0
    feeds = tmp_path / "in.npz"
    np.savez(feeds, **open_bundle(bundle).example_inputs())
    ran = cli("run", str(bundle), "--input", str(feeds), "--output", str(tmp_path / "out.npz"),
              "--quiet")
    assert ran.returncode == 0, ran.stderr[-3000:]
    run_bundle(bundle, feeds, tmp_path / "ref.npz")  # the same run in the compile install
    with np.load(tmp_path / "out.npz") as got, np.load(tmp_path / "ref.npz") as ref:
        assert sorted(got) == sorted(ref)
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6)
    # the image's agent: every runtime installed, a bundle profiled through it
    token = write_token(tmp_path / "token")
    agent = Agent(tmp_path / "work", token, tmp_path, python=bin_dir / "python", cwd=tmp_path)
    try:
        runtimes = agent_info(agent.url, str(token))["runtimes"]
        assert {"onnx", "openvino", "tflite", "tvm"} <= set(runtimes), runtimes
        prof = remote_profile(bundle, agent.url, str(token), runs=3, warmup=1)
        assert prof["latency_ms"]["p50"] > 0
    finally:
        agent.stop()
