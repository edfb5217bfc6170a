"""The plan search on a local Ray cluster of 2 workers chooses the plan the in-process search
chooses, from the same measurements. Latency is predicted for a device profile (rpi5), so no
timing noise enters the choice; quality is measured by onnxruntime on the workers."""

from __future__ import annotations

import logging

import pytest

from layerwise.api import compile
from layerwise.base.errors import LayerwiseError
from layerwise.options import CompileOptions, check_compile
from tests.conftest import FIXTURES

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

SPEC = f"{FIXTURES}:residual_mlp"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs (2 workers), shared by this module's tests."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _plan(c: dict) -> tuple:
    return (tuple(c["drop"]), c["prune"], c["precision"], tuple(c["keep_fp32"]))


def test_ray_search_chooses_the_in_process_plan(tmp_path, mlp_data, cluster):
    opts = {"data": str(mlp_data), "max_drop": "2%", "search_budget": "10m", "device": "rpi5",
            "target": "onnx", "db": "none"}
    here = compile(SPEC, CompileOptions(out=str(tmp_path / "here"), **opts))
    there = compile(SPEC, CompileOptions(out=str(tmp_path / "ray"), executor="ray", **opts))
    a, b = here["search"], there["search"]
    assert _plan(a["chosen"]) == _plan(b["chosen"])
    assert set(a["chosen"]["drop"]) == {"blocks.1", "blocks.3", "blocks.5"}
    # the same candidates, in the same order, with the same figures
    assert [_plan(c) for c in a["candidates"]] == [_plan(c) for c in b["candidates"]]
    for x, y in zip(a["candidates"], b["candidates"]):
        assert x["quality"] == pytest.approx(y["quality"], rel=1e-6, abs=1e-9)
        assert x["latency_ms"] == y["latency_ms"] and x["size_bytes"] == y["size_bytes"]
    # the per-layer int8 sensitivity (computed on a worker) that orders the fp32 layers
    assert [r["layer"] for r in a["layers"]] == [r["layer"] for r in b["layers"]]
    assert [r["int8_error"] for r in a["layers"]] == pytest.approx(
        [r["int8_error"] for r in b["layers"]], rel=1e-5)
    assert a["executor"] == {"name": "local", "workers": 1}
    ex = b["executor"]
    assert ex["name"] == "ray" and ex["workers"] == 2 and 1 <= ex["worker_processes"] <= 2
    assert ex["address"] == "the Ray cluster this process had initialised"
    assert ray.is_initialized()  # a cluster layerwise did not start is left running
    assert there["verification"]["passed"]
    assert there["sizes"]["model_bytes"] == here["sizes"]["model_bytes"]


def test_a_plan_a_worker_cannot_build_fails_here_with_its_error(mlp_data, cluster):
    from layerwise.api import load_source
    from layerwise.compiler.frontend import lift
    from layerwise.judge import make_judge
    from layerwise.plan import Search, split
    from layerwise.plan_ray import RayExecutor
    from layerwise.sources.data import load_batches

    ir = lift(load_source(SPEC))
    batches, held = split(load_batches(str(mlp_data), ir, None, batch_size=8))
    opts = CompileOptions(out="unused", data=str(mlp_data), max_drop="2%", target="onnx")
    s = Search(SPEC, ir, opts, batches, make_judge(held, None, None, False), lambda _: None)
    with RayExecutor(s, "ray") as ex:
        assert ex.torch_quality(["blocks.1"], None) == pytest.approx(
            s.torch_quality(["blocks.1"], None), rel=1e-6)
        with pytest.raises(LayerwiseError, match="no layer 'nope' in this model"):
            ex.torch_quality(["nope"], None)


def test_executor_is_checked_before_any_work(tmp_path):
    out = str(tmp_path / "b")
    with pytest.raises(LayerwiseError, match="add --max-drop"):
        check_compile(CompileOptions(out=out, executor="ray"))
    with pytest.raises(LayerwiseError, match="ray://HOST:PORT"):
        check_compile(CompileOptions(out=out, data="x.npz", max_drop="1%", executor="dask"))
    opts = check_compile(CompileOptions(out=out, data="x.npz", max_drop="1%",
                                        executor="ray://10.0.0.5:10001"))
    assert opts.executor == "ray://10.0.0.5:10001"
