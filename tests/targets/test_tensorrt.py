"""TensorRT target: ONNX checked against the parser's operators and TensorRT's Q/DQ rules,
engine build scripts with the batch profile; verified with onnxruntime here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from layerwise import api
from layerwise.images import photo_crops
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, x=photo_crops(8, seed=3, size=224))
    return path


def test_int8_bundle_follows_tensorrt_rules(tmp_path, calib):
    out = tmp_path / "trt"
    m = api.compile("timm:resnet18", api.CompileOptions(
        target="tensorrt", out=str(out), precision="int8", data=str(calib), db="none"))
    assert m["verification"]["passed"] and m["verification"]["runtime"] == "onnxruntime"
    recipe = m["plan"]["quantize"]["recipe"]
    assert recipe["symmetric_activations"] and recipe["calibration"] == "mean_minmax"
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 40
    for n in qdq:  # symmetric int8: every zero point is an int8 zero
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    per_channel = [n for n in qdq if inits[n.input[1]].size > 1]
    assert per_channel  # conv weights carry one scale per output channel
    sh = (out / "build_engine.sh").read_text()
    assert "--int8" in sh and "--minShapes=x:1x3x224x224" in sh and "--maxShapes=x:32x3x224x224" in sh
    py = (out / "build_engine.py").read_text()
    assert "BuilderFlag.INT8" in py and "set_shape('x'" in py
    compile(py, "build_engine.py", "exec")  # the builder script is valid Python


def test_build_engine_without_tensorrt_says_so(bundles):
    path, _ = bundles("tests/fixtures/models.py:lstm_classifier", "tensorrt")
    proc = subprocess.run([sys.executable, "-m", "layerwise", "build-engine", str(path)],
                          capture_output=True, text=True, check=False, cwd=ROOT, timeout=120)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert proc.returncode == 2 and "TensorRT is not installed" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    else:  # pragma: no cover - only where TensorRT and a GPU exist
        assert proc.returncode == 0 and (path / "model.plan").exists()


def test_engine_builder_ignores_the_bundles_own_script(bundles, tmp_path):
    """A bundle's build_engine.py is not run: the builder is written anew from the manifest,
    so a tampered script (sha256 re-listed) changes nothing."""
    import json
    import shutil

    from layerwise.runtime.bundle import open_bundle, sha256_file
    from layerwise.targets.tensorrt import builder_script, engine_builder

    path, _ = bundles("tests/fixtures/models.py:lstm_classifier", "tensorrt")
    b = Path(shutil.copytree(path, tmp_path / "b"))
    (b / "build_engine.py").write_text("open('pwned', 'w')\n")
    m = json.loads((b / "manifest.json").read_text())
    entry = next(f for f in m["files"] if f["name"] == "build_engine.py")
    entry.update(bytes=(b / "build_engine.py").stat().st_size,
                 sha256=sha256_file(b / "build_engine.py"))
    (b / "manifest.json").write_text(json.dumps(m))
    source = engine_builder(open_bundle(b))
    assert "pwned" not in source
    assert source == builder_script(m["model"]["file"], m["precision"],
                                    {s["name"]: s["shape"] for s in m["inputs"]})
