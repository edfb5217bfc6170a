"""`layerwise diff`: each layer's output in the bundle, read through its own runtime, against the
original model's; answers known by construction (an exact fp32 bundle, a dropped block, one
block quantized alone)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layerwise import api
from layerwise.base.errors import TargetError
from layerwise.diff import diff
from layerwise.runtime.taps import open_taps
from tests.conftest import FIXTURES, ROOT

SPEC = f"{FIXTURES}:residual_mlp"
BLOCKS = [f"blocks.{i}" for i in range(6)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("diff") / "data.npz"
    np.savez(p, x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    return p


def _compile(out: Path, **kw) -> Path:
    api.compile(SPEC, api.CompileOptions(out=str(out), db="none", **kw))
    return out


def _rows(result: dict) -> dict[str, dict]:
    return {r["layer"]: r for r in result["layers"]}


@pytest.mark.parametrize("target", ["onnx", "openvino", "tflite"])
def test_fp32_bundle_matches_the_original_at_every_layer(tmp_path, target):
    result = diff(_compile(tmp_path / "b", target=target))
    rows = _rows(result)
    assert set(BLOCKS) <= set(rows)
    assert all(rows[b]["status"] == "ok" for b in BLOCKS)
    ok = [r for r in result["layers"] if r["status"] == "ok"]
    s = result["summary"]
    assert s["compared"] + s["fused"] == s["layers"] and s["compared"] >= 0.7 * s["layers"]
    assert max(r["rel_err"] for r in ok) < 1e-4
    assert result["output"]["rel_err"] < 1e-4


def test_a_dropped_block_is_listed_and_the_error_starts_there(tmp_path):
    result = diff(_compile(tmp_path / "b", target="onnx", drop="blocks.1"))
    rows = _rows(result)
    assert rows["blocks.1"]["status"] == "dropped"
    assert all(rows[f"blocks.{i}"]["status"] == "ok" for i in (0, 2, 3, 4, 5))
    assert rows["blocks.0"]["rel_err"] < 1e-5
    assert rows["blocks.2"]["rel_err"] > 1e-3  # the dropped branch is small but not zero
    assert result["summary"]["dropped"] >= 1


def test_one_block_quantized_alone_is_where_the_divergence_starts(tmp_path, data):
    keep = ",".join(["inp", "head", *(b for b in BLOCKS if b != "blocks.3")])
    result = diff(_compile(tmp_path / "b", target="onnx", precision="int8", data=str(data),
                           keep_fp32=keep))
    ok = [r for r in result["layers"] if r["status"] == "ok"]
    first = next(r for r in ok if r["rel_err"] > 1e-3)
    assert first["layer"].startswith("blocks.3")
    before = [r for r in ok[:ok.index(first)] if r["layer"].startswith("blocks.")]
    assert before and max(r["rel_err"] for r in before) < 1e-5
    assert 0 < result["output"]["rel_err"] < 0.1


def test_diff_from_the_cli_prints_json_and_refuses_mistakes(tmp_path):
    bundle = _compile(tmp_path / "b", target="onnx")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "layerwise", "diff", *args],
                              capture_output=True, text=True, cwd=ROOT, check=False,
                              timeout=600)

    proc = cli(str(bundle), "--json", "--depth", "blocks")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert [r["layer"] for r in out["layers"]] == BLOCKS
    bad = tmp_path / "bad.npz"
    np.savez(bad, y=np.zeros((1, 16), np.float32))
    for args in ([str(bundle), "--inputs", str(tmp_path / "missing.npz")],
                 [str(bundle), "--inputs", str(bad)],
                 [str(tmp_path)]):
        proc = cli(*args, "--quiet")
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_runtime_without_taps_is_refused_before_any_work(tmp_path):
    with pytest.raises(TargetError, match="--target onnx"):
        open_taps("tvm", tmp_path / "model.so")
