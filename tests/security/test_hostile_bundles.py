"""Hostile bundles: a manifest cannot make `run` or `profile` read outside the bundle, and
every refusal is one line with exit 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from layerwise.base.errors import BundleError
from layerwise.runtime.bundle import open_bundle, sha256_file
from tests.conftest import FIXTURES
from tests.layerwise.test_cli_errors import assert_user_error, run_cli


@pytest.fixture(scope="module")
def pristine(bundles) -> Path:
    out, _ = bundles(f"{FIXTURES}:residual_mlp")
    return out


@pytest.fixture
def bundle(pristine, tmp_path) -> Path:
    """A fresh copy inside tmp_path/work, with a secret file beside it (outside the bundle)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "secret.onnx").write_bytes((pristine / "model.onnx").read_bytes())
    return Path(shutil.copytree(pristine, work / "b"))


def _edit(bundle: Path, fn) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    fn(m)
    (bundle / "manifest.json").write_text(json.dumps(m))
    return m


def _list(m: dict, name: str, path: Path) -> None:
    """List `name` in files with the real size and sha256 of `path` (what an attacker does)."""
    m["files"].append({"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)})


def _model_outside_dotdot(b: Path) -> None:
    def fn(m):
        _list(m, "../secret.onnx", b.parent / "secret.onnx")
        m["model"]["file"] = "../secret.onnx"
    _edit(b, fn)


def _model_absolute(b: Path) -> None:
    def fn(m):
        secret = b.parent / "secret.onnx"
        _list(m, str(secret), secret)
        m["model"]["file"] = str(secret)
    _edit(b, fn)


def _model_symlink(b: Path) -> None:
    (b / "model.onnx").unlink()
    os.symlink(b.parent / "secret.onnx", b / "model.onnx")


def _dir_symlink(b: Path) -> None:
    os.symlink(b.parent, b / "up")

    def fn(m):
        _list(m, "up/secret.onnx", b.parent / "secret.onnx")
        m["model"]["file"] = "up/secret.onnx"
    _edit(b, fn)


def _model_unlisted(b: Path) -> None:
    shutil.copy(b / "model.onnx", b / "other.onnx")
    _edit(b, lambda m: m["model"].update(file="other.onnx"))


def _companion_unlisted(b: Path) -> None:
    (b / "model.onnx.data").write_bytes(b"\x00" * 16)


def _no_inputs(b: Path) -> None:
    _edit(b, lambda m: m.pop("inputs"))


def _unknown_dtype(b: Path) -> None:
    _edit(b, lambda m: m["inputs"][0].update(dtype="object"))


def _files_not_a_list(b: Path) -> None:
    _edit(b, lambda m: m.update(files={"name": "model.onnx"}))


def _manifest_a_list(b: Path) -> None:
    (b / "manifest.json").write_text("[1, 2, 3]")


def _bad_sha(b: Path) -> None:
    _edit(b, lambda m: m["files"][0].update(sha256="not-a-digest"))


def _example_inputs_wrong_shape(b: Path) -> None:
    import numpy as np

    with open(b / "inputs.npz", "wb") as f:
        np.savez(f, x=np.zeros((2, 3), np.float32))

    def fn(m):
        entry = next(f for f in m["files"] if f["name"] == "inputs.npz")
        entry.update(bytes=(b / "inputs.npz").stat().st_size, sha256=sha256_file(b / "inputs.npz"))
    _edit(b, fn)


CASES = {
    "model ../ outside": (_model_outside_dotdot, "outside the bundle"),
    "model absolute path": (_model_absolute, "outside the bundle"),
    "model is a symlink out": (_model_symlink, "symbolic link"),
    "a directory symlink out": (_dir_symlink, "symbolic link"),
    "model not listed": (_model_unlisted, "not listed"),
    "unlisted external data": (_companion_unlisted, "not listed"),
    "no inputs": (_no_inputs, "no inputs"),
    "unknown dtype": (_unknown_dtype, "unknown dtype"),
    "files not a list": (_files_not_a_list, "no files list"),
    "manifest a list": (_manifest_a_list, "not a JSON object"),
    "bad sha256": (_bad_sha, "sha256"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_open_bundle_refuses(bundle, case):
    make, needle = CASES[case]
    make(bundle)
    with pytest.raises(BundleError, match=needle):
        open_bundle(bundle)


@pytest.mark.parametrize("case", ["model ../ outside", "model is a symlink out",
                                  "unknown dtype"])
def test_run_and_profile_exit_2(bundle, tmp_path, case):
    make, needle = CASES[case]
    make(bundle)
    proc = run_cli("run", str(bundle), "--input", str(bundle / "inputs.npz"), "--output",
                   str(tmp_path / "y.npz"))
    assert_user_error(proc, needle)
    assert not (tmp_path / "y.npz").exists()
    assert_user_error(run_cli("profile", str(bundle), "--runs", "2"), needle)


def test_example_inputs_that_do_not_match_the_manifest(bundle):
    _example_inputs_wrong_shape(bundle)
    with pytest.raises(BundleError, match=r"inputs.npz does not hold .*shape \[2, 3\]"):
        open_bundle(bundle).example_inputs()


def test_the_pristine_copy_opens(bundle):
    b = open_bundle(bundle)
    assert b.model_path == bundle / "model.onnx"
    assert set(b.example_inputs()) == {"x"}


def test_a_manifest_cannot_choose_python_to_run(bundle, tmp_path):
    """--baseline eager loads the bundle's SPEC; a SPEC that imports Python runs only when the
    user names it (--baseline-spec)."""
    canary = tmp_path / "canary"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(canary)!r}, 'w')\ndef make():\n    raise SystemExit\n")
    _edit(bundle, lambda m: m.update(spec=f"{evil}:make"))
    proc = run_cli("profile", str(bundle), "--runs", "2", "--baseline", "eager")
    assert_user_error(proc, "--baseline-spec")
    assert not canary.exists()
    proc = run_cli("profile", str(bundle), "--runs", "2", "--warmup", "1", "--baseline",
                   "eager", "--baseline-spec", f"{FIXTURES}:residual_mlp", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["baseline"]["name"] == "torch eager"
