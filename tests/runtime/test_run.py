"""`layerwise run`: inputs that do not fit the bundle and outputs that cannot be written are
refused with one line (exit 2), before the model runs and without leaving files behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURES
from tests.layerwise.test_cli_errors import assert_user_error, run_cli

GCN = f"{FIXTURES}:gcn"  # inputs x: [n, 8] float32, edges: [2, e] int64


@pytest.fixture(scope="module")
def gcn(bundles) -> tuple[Path, dict[str, np.ndarray]]:
    from layerwise.runtime import open_bundle

    path, _ = bundles(GCN)
    return path, open_bundle(path).example_inputs()


def _run(bundle: Path, inputs: dict[str, np.ndarray], tmp_path: Path, output: str | Path,
         *extra: str):
    src = tmp_path / "in.npz"
    np.savez(src, **inputs)
    return run_cli("run", str(bundle), "--input", str(src), "--output", str(output), *extra)


@pytest.mark.parametrize("change, needles", [
    (lambda f: {**f, "x": np.full(f["x"].shape, "1.5")}, ["'x' holds strings", "float32"]),
    (lambda f: {**f, "x": f["x"] + 1j}, ["'x' holds complex numbers", "float32"]),
    (lambda f: {**f, "edges": f["edges"] + 0.5}, ["'edges'", "float64", "int64"]),
    (lambda f: {**f, "mask": np.ones(3), "extra": np.ones(2)},
     ["['extra', 'mask']", "does not take", "['x', 'edges']"]),
    (lambda f: {"x": f["x"][:, :4], "edges": f["edges"]}, ["'x' has shape [10, 4]", "8]"]),
])
def test_inputs_that_do_not_fit(gcn, tmp_path, change, needles):
    bundle, feeds = gcn
    out = tmp_path / "out.npz"
    proc = _run(bundle, change(feeds), tmp_path, out)
    assert_user_error(proc, "in.npz", *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


def test_not_an_npz(gcn, tmp_path):
    bundle, _ = gcn
    for name, data in (("a.npz", b"plain text"), ("b.npz", None)):
        src = tmp_path / name
        if data is None:
            np.save(tmp_path / "b.npy", np.zeros(3))
            (tmp_path / "b.npy").rename(src)
        else:
            src.write_bytes(data)
        proc = run_cli("run", str(bundle), "--input", str(src), "--output",
                       str(tmp_path / "o.npz"))
        assert_user_error(proc, f"--input {src}", "np.savez")


@pytest.mark.parametrize("where, needles", [
    ("dir", ["is a directory", "outputs.npz"]),
    ("under_file", ["is a file, not a folder"]),
    ("proc", ["cannot write --output /proc/"]),
])
def test_outputs_that_cannot_be_written(gcn, tmp_path, where, needles):
    bundle, feeds = gcn
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("user data")
    output = {"dir": tmp_path / "dir", "under_file": tmp_path / "file" / "out.npz",
              "proc": Path("/proc/layerwise-out.npz")}[where]
    proc = _run(bundle, feeds, tmp_path, output)
    assert_user_error(proc, *needles)
    assert list((tmp_path / "dir").iterdir()) == []
    assert (tmp_path / "file").read_text() == "user data"


def test_negative_threads(gcn, tmp_path):
    bundle, feeds = gcn
    proc = _run(bundle, feeds, tmp_path, tmp_path / "o.npz", "--threads", "-1")
    assert_user_error(proc, "--threads must be an integer >= 0")
    assert not (tmp_path / "o.npz").exists()


def test_fitting_inputs_are_cast_within_their_kind(gcn, tmp_path):
    bundle, feeds = gcn
    out = tmp_path / "new" / "out.npz"
    proc = _run(bundle, {"x": feeds["x"].astype(np.float64),
                         "edges": feeds["edges"].astype(np.int32)}, tmp_path, out)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as z:
        assert z["output"].shape == (10, 3)
    assert [p.name for p in out.parent.iterdir()] == ["out.npz"]
