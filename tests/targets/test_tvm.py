"""TVM target: Relax VM library verified and profiled; MetaSchedule database kept and reused;
aarch64 cross-compile; unmappable ops refused in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from layerwise import api
from layerwise.base.errors import TargetError, VerificationError
from layerwise.runtime import open_bundle, open_runner
from tests.conftest import FIXTURES

pytest.importorskip("tvm", reason="the tvm extra is not installed")

MLP = f"{FIXTURES}:residual_mlp"
EM_AARCH64 = 183


def options(**kw) -> api.CompileOptions:
    return api.CompileOptions(target="tvm", db="none", **kw)


class Lgamma(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(x.abs() + 1.0)


def lgamma_model():
    return Lgamma(), {"x": torch.rand(2, 4)}, "tabular"


@pytest.fixture(scope="module")
def untuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tvm") / "b"
    return out, api.compile(MLP, options(out=str(out), tvm_cross="aarch64"))


def test_verified_dynamic_batch_and_profiled(untuned):
    out, m = untuned
    assert m["verification"]["passed"] and m["verification"]["rel_err"] <= 1e-4
    assert m["model"]["dynamic_batch"] and m["inputs"][0]["shape"][0] == "batch"
    assert m["model"]["latency_ms"]["untuned"] > 0 and "tuning" not in m["model"]
    b = open_bundle(out)
    runner = open_runner(b.target, b.model_path)
    feeds = b.example_inputs()
    one = runner.run({k: v[:1] for k, v in feeds.items()})
    full = runner.run(feeds)
    np.testing.assert_allclose(one[0][0], full[0][0], rtol=1e-5, atol=1e-6)
    r = api.profile(str(out), api.ProfileOptions(runs=5, warmup=1, per_op=True, db="none"))
    assert r["runtime"].startswith("tvm ") and r["latency_ms"]["p50"] > 0
    assert any("matmul" in op["op"] for op in r["ops"])  # per kernel, from the VM hook


def test_aarch64_cross_compile_is_an_aarch64_elf(untuned):
    out, m = untuned
    cross = m["model"]["cross"]
    if cross["compiler"] is None:
        pytest.skip("no aarch64-linux-gnu-g++/gcc: apt-get install g++-aarch64-linux-gnu")
    head = (out / cross["file"]).read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
    assert int.from_bytes(head[18:20], "little") == EM_AARCH64
    assert cross["file"] in {f["name"] for f in m["files"]}


THREADS = """
import sys, tvm
from layerwise.runtime import open_bundle, open_runner
from layerwise.runtime.tvm import host_cores
b = open_bundle(sys.argv[1])
r = open_runner("tvm", b.model_path)
r.run(b.example_inputs())
pool = tvm.get_global_func("runtime.NumThreads")
print(host_cores(), r.threads, pool())
one = open_runner("tvm", b.model_path, threads=1)
one.run(b.example_inputs())
print(one.threads, pool())
"""


def test_runner_uses_every_core_by_default(untuned):
    """Without TVM_NUM_THREADS, TVM would size its pool at half the cores (one on two vCPUs);
    the runner raises that to every core, as ONNX Runtime and OpenVINO use, and threads=1
    still pins one."""
    out, _ = untuned
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-c", THREADS, str(out)], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = proc.stdout.split("\n")[-3:-1]
    cores, threads, pool = map(int, first.split())
    assert threads == pool == cores
    assert second.split() == ["1", "1"]


def test_tuning_database_kept_and_reused(tmp_path):
    out = tmp_path / "tuned"
    m = api.compile(MLP, options(out=str(out), tune_trials=4))
    tuning = m["model"]["tuning"]
    assert tuning["records"] > 0 and tuning["reused"] is None
    names = {f["name"] for f in m["files"]}
    assert {"tuning/database_workload.json", "tuning/database_tuning_record.json"} <= names
    # tuned for batch 1, as an edge device runs it, and verified on the first example row
    assert not m["model"]["dynamic_batch"] and m["inputs"][0]["shape"] == [1, 16]
    assert m["model"]["batch"] == 1
    b = open_bundle(out)
    runner = open_runner("tvm", b.model_path)
    one = b.example_inputs()
    two = {k: np.concatenate([v, -v]) for k, v in one.items()}  # runs as two batch-1 calls
    np.testing.assert_array_equal(runner.run(two)[0][:1], runner.run(one)[0])
    assert m["verification"]["rel_err"] <= 1e-4
    assert set(m["model"]["latency_ms"]) == {"untuned", "tuned"}
    # the next compile at the same --out starts from that database (no new trials here)
    again = api.compile(MLP, options(out=str(out), force=True, tune_trials=0))
    assert again["model"]["tuning"]["reused"] == str((out / "tuning").resolve())
    assert again["model"]["tuning"]["records"] == tuning["records"]
    # and a database can be named explicitly, from a copy of the bundle
    shutil.copytree(out, tmp_path / "copy")
    third = api.compile(MLP, options(out=str(tmp_path / "third"), tune_db=str(tmp_path / "copy")))
    assert third["model"]["tuning"]["records"] == tuning["records"]


def test_unmappable_op_is_one_line_error(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(TargetError) as e:
        api.compile(f"{__file__}:lgamma_model", options(out=str(out)))
    msg = str(e.value)
    assert "\n" not in msg and "aten.lgamma" in msg and "--target" in msg
    assert not out.exists() and not list(tmp_path.glob(".x.tmp-*"))


def test_wrong_results_fail_verification(tmp_path, monkeypatch):
    """Without legalize_negative_select, TVM 0.27 reads the decomposed 2-layer LSTM's
    negative indices out of bounds (NaN or far off, varying from run to run): verification
    refuses the artifact and writes nothing."""
    import dataclasses

    import layerwise.targets.tvm as tvm_target

    info = tvm_target.INFO
    monkeypatch.setattr(tvm_target, "INFO", dataclasses.replace(
        info, legalize=tuple(p for p in info.legalize if p != "legalize_negative_select")))
    out = tmp_path / "x"
    with pytest.raises(VerificationError, match="misses the reference") as e:
        api.compile(f"{FIXTURES}:lstm_classifier", options(out=str(out)))
    assert "\n" not in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".x.tmp-*"))


def test_the_lstm_verifies_with_its_indices_legalized(tmp_path):
    man = api.compile(f"{FIXTURES}:lstm_classifier", options(out=str(tmp_path / "x")))
    assert man["verification"]["passed"]


def test_bad_tune_db_is_refused(tmp_path):
    with pytest.raises(TargetError, match="no MetaSchedule database"):
        api.compile(MLP, options(out=str(tmp_path / "x"), tune_db=str(tmp_path)))


def conv_bn_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
        torch.nn.ReLU6(), torch.nn.Conv2d(8, 8, 3, groups=8, bias=False),
        torch.nn.BatchNorm2d(8))
    for m in net:
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, so folding matters
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    return net.eval(), {"input": torch.rand(2, 3, 8, 8)}, "image"


def test_batch_norms_fold_into_convs(tmp_path):
    from layerwise.targets import tvm as tvm_target

    ir = api.lift(f"{__file__}:conv_bn_model")
    mod = tvm_target._import(ir)
    assert mod.script().count("R.nn.batch_norm") == 2
    folded = tvm_target._fold_batch_norms(mod).script()
    assert "batch_norm" not in folded and folded.count("R.nn.conv2d") == 2
    m = api.compile(f"{__file__}:conv_bn_model", options(out=str(tmp_path / "b")))
    assert m["verification"]["rel_err"] < 1e-5


def test_a_library_compiled_elsewhere_needs_trust(untuned, tmp_path, monkeypatch):
    """A TVM model is native code: loaded only when compiled on this machine (its sha256 in
    the trust file) or with --trust-native; a trust file others may write counts for nothing."""
    from layerwise.base.errors import BundleError
    from layerwise.runtime.native_trust import trust_file
    from tests.layerwise.test_cli_errors import assert_user_error, run_cli

    out, _ = untuned
    b = open_bundle(out)
    open_runner(b.target, b.model_path)  # compiled here: trusted
    elsewhere = tmp_path / "trusted-native"
    elsewhere.write_text("")
    monkeypatch.setenv("LAYERWISE_TRUST", str(elsewhere))
    assert trust_file() == elsewhere
    with pytest.raises(BundleError, match="native code"):
        open_runner(b.target, b.model_path)
    assert open_runner(b.target, b.model_path, trust_native=True).run(b.example_inputs())
    proc = run_cli("run", str(out), "--input", str(out / "inputs.npz"),
                   "--output", str(tmp_path / "y.npz"))
    assert_user_error(proc, "native code", "--trust-native")
    proc = run_cli("run", str(out), "--input", str(out / "inputs.npz"),
                   "--output", str(tmp_path / "y.npz"), "--trust-native")
    assert proc.returncode == 0, proc.stderr
    from layerwise.runtime.bundle import sha256_file

    elsewhere.write_text(sha256_file(b.model_path) + "\n")
    open_runner(b.target, b.model_path)
    elsewhere.chmod(0o666)
    with pytest.raises(BundleError, match="native code"):
        open_runner(b.target, b.model_path)
