"""Fuzzed manifests and input files against `open_bundle` and `run`: every outcome is a
result or a LayerwiseError, and nothing outside the bundle is opened."""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerwise.base.errors import LayerwiseError
from layerwise.runtime.bundle import open_bundle
from layerwise.runtime.run import run_bundle
from tests.conftest import FIXTURES

# Paths every `open` audit event is checked against while WATCH is set (an audit hook cannot
# be removed, so it is installed once and idles otherwise).
WATCH: dict[str, object] = {}


def _audit(event: str, args: tuple) -> None:
    if event == "open" and WATCH and isinstance(args[0], str | bytes | Path):
        WATCH.setdefault("opened", []).append(str(Path(str(args[0]))))  # type: ignore[union-attr]


sys.addaudithook(_audit)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 1 << 40) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=6)
PATHS = st.sampled_from(["../secret.onnx", "/etc/passwd", "SECRET", "up/secret.onnx",
                         "model.onnx", "inputs.npz", "./model.onnx", "a/../../secret.onnx",
                         "", "~/x", "model.onnx\x00", "..", ".", "manifest.json", "C:\\x"])
KEYS = [("format",), ("target",), ("model",), ("model", "file"), ("model", "files"),
        ("example_inputs",), ("inputs",), ("inputs", 0), ("inputs", 0, "dtype"),
        ("inputs", 0, "shape"), ("inputs", 0, "name"), ("outputs",), ("outputs", 0, "name"),
        ("files",), ("files", 0), ("files", 0, "name"), ("files", 0, "bytes"),
        ("files", 1, "name"), ("files", 1, "sha256")]
MUTATION = st.tuples(st.sampled_from(KEYS), st.one_of(JSON, PATHS, st.just("<delete>")))


@pytest.fixture(scope="module")
def pristine(bundles) -> Path:
    out, _ = bundles(f"{FIXTURES}:residual_mlp")
    return out


@pytest.fixture(scope="module")
def work():
    root = Path(tempfile.mkdtemp(prefix="layerwise-fuzz-"))
    yield root, itertools.count()
    shutil.rmtree(root, ignore_errors=True)


def _fresh(pristine: Path, work) -> tuple[Path, Path]:
    root, counter = work
    case = root / f"c{next(counter)}"
    case.mkdir()
    (case / "secret.onnx").write_bytes((pristine / "model.onnx").read_bytes())
    return Path(shutil.copytree(pristine, case / "b")), case


def _mutate(m: dict, key: tuple, value, secret: str) -> None:
    *path, last = key
    obj = m
    for k in path:
        found = (isinstance(obj, dict) and k in obj) or (
            isinstance(obj, list) and isinstance(k, int) and k < len(obj))
        obj = obj[k] if found else None
        if obj is None:
            return
    if value == "SECRET":
        value = secret
    if isinstance(obj, dict):
        if value == "<delete>":
            obj.pop(last, None)
        else:
            obj[last] = value
    elif isinstance(obj, list) and isinstance(last, int) and last < len(obj):
        obj[last] = value


def _guarded(bundle: Path, case: Path, fn) -> None:
    """Run fn with `open` watched; only LayerwiseError may escape; nothing outside `bundle`
    under `case` may be opened, and an opened bundle's model lies inside it."""
    WATCH.clear()
    WATCH["on"] = True
    try:
        fn()
    except LayerwiseError as e:
        assert str(e).strip() and "\n" not in str(e).strip()
    finally:
        opened = WATCH.pop("opened", [])
        WATCH.clear()
    root = case.resolve()
    for p in opened:
        rp = Path(p).resolve() if Path(p).is_absolute() else (Path.cwd() / p).resolve()
        if root in rp.parents and bundle.resolve() not in rp.parents:
            # the user's own input and output files
            assert rp.name in ("x.npz", "y.npz") or rp.name.startswith(".y.npz"), f"opened {p}"
        assert "secret" not in rp.name and rp != Path("/etc/passwd"), f"opened {p}"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(MUTATION, min_size=1, max_size=3))
def test_fuzzed_manifests(pristine, work, mutations):
    bundle, case = _fresh(pristine, work)
    m = json.loads((bundle / "manifest.json").read_text())
    for key, value in mutations:
        _mutate(m, key, value, str(case / "secret.onnx"))
    (bundle / "manifest.json").write_text(json.dumps(m))

    def go():
        b = open_bundle(bundle)
        assert bundle.resolve() in b.model_path.resolve().parents
        run_bundle(bundle, bundle / "inputs.npz", case / "y.npz")
    _guarded(bundle, case, go)


DTYPES = st.sampled_from(["float32", "float64", "float16", "int64", "int8", "uint8", "bool",
                          "complex64", "<U3", "S2", "object", "datetime64[s]"])
ARRAYS = st.tuples(st.sampled_from(["x", "y", "x ", ""]), DTYPES,
                   st.lists(st.integers(0, 17), max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(ARRAYS, min_size=0, max_size=3))
def test_fuzzed_input_files(pristine, work, arrays):
    bundle, case = _fresh(pristine, work)
    feed = case / "x.npz"
    data = {}
    for name, dtype, shape in arrays:
        if name:
            data[name] = np.zeros(shape, dtype=np.dtype(dtype))
    with open(feed, "wb") as f:
        np.savez(f, allow_pickle=True, **data)

    def go():
        result = run_bundle(bundle, feed, case / "y.npz")
        assert result["outputs"][0]["shape"][1:] == [10]
    _guarded(bundle, case, go)
