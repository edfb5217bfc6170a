"""User mistakes in data, model folders and numeric options: exit 2 with one line that says
what to do (never an internal error, never silently accepted)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from layerwise.base.errors import LayerwiseError
from layerwise.base.params import from_namespace
from layerwise.spec import SourceOptions
from tests.conftest import FIXTURES
from tests.layerwise.test_cli_errors import assert_user_error, run_cli

MLP = f"{FIXTURES}:residual_mlp"  # one input x: [batch, 16] float32

TINY_CNN = '''
import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def tiny_cnn():
    torch.manual_seed(0)
    return TinyCNN().eval(), {"x": torch.randn(2, 3, 16, 16)}, "vision"
'''


def _analyze(tmp_path, spec: str, data, *extra: str):
    out = tmp_path / "report"
    proc = run_cli("analyze", spec, "--data", str(data), "--out", str(out), "--quiet",
                   "--methods", "layer_ablation", "--db", "none", *extra)
    return proc, out


@pytest.mark.parametrize("arrays, needles", [
    ({"x": np.zeros((4, 7), np.float32)}, ["input 'x' has shape [4, 7]", "[batch, 16]"]),
    ({"x": np.zeros(4, np.float32)}, ["input 'x' has shape [4]", "[batch, 16]"]),
    ({"x": np.full((4, 16), "a")}, ["input 'x' holds strings", "float32"]),
    ({"x": np.zeros((4, 16), np.float32), "y": np.zeros(4)}, ["['y']", "does not take"]),
    ({"x": np.zeros((4, 16), np.float32), "labels": np.zeros(3)}, ["'labels'", "one row"]),
])
def test_analyze_npz_that_does_not_fit(tmp_path, arrays, needles):
    data = tmp_path / "d.npz"
    np.savez(data, **arrays)
    proc, out = _analyze(tmp_path, MLP, data)
    assert_user_error(proc, "d.npz", *needles)
    assert not out.exists()


def test_image_folder_with_a_file_that_is_not_an_image(tmp_path):
    from PIL import Image

    (tmp_path / "cnn.py").write_text(TINY_CNN)
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (20, 20), (200, 10, 10)).save(folder / "a.png")
    (folder / "b.jpg").write_text("this is not a photo")
    proc, out = _analyze(tmp_path, f"{tmp_path / 'cnn.py'}:tiny_cnn", tmp_path / "images")
    assert_user_error(proc, "b.jpg", "not an image", "remove or replace it")
    assert not out.exists()


def test_binary_file_as_text_data(tmp_path, hf_folders):
    data = tmp_path / "sentences.txt"
    data.write_bytes(bytes(range(256)) * 8)
    proc, out = _analyze(tmp_path, f"hf:{hf_folders['bert']}", data)
    assert_user_error(proc, "sentences.txt", "binary data", "UTF-8 text file")
    assert not out.exists()
    data.write_bytes(b"a first sentence\n\xff\xfe latin-1 text\n")
    proc, _ = _analyze(tmp_path, f"hf:{hf_folders['bert']}", data)
    assert_user_error(proc, "not UTF-8 text", "byte 0xff")


@pytest.mark.parametrize("config, needles", [
    ('{"model_type": "bert",', ["not valid JSON", "line 1"]),
    ("[1, 2]", ["holds a JSON list", "not an object"]),
    ('{"model_type": "no_such_arch"}', ["model_type 'no_such_arch'", "does not know"]),
    ('{"model_type": "bert", "hidden_size": "wide"}', ["hidden_size"]),
])
def test_hf_folder_with_a_bad_config(tmp_path, config, needles):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    proc = run_cli("inspect", f"hf:{folder}", "--quiet")
    assert_user_error(proc, "config.json", *needles)


@pytest.mark.parametrize("args, needles", [
    (["inspect", MLP, "--seq-len", "-5"], ["--seq-len must be a positive integer", "-5"]),
    (["inspect", MLP, "--image-size", "0"], ["--image-size must be a positive integer"]),
    (["compile", MLP, "--seq-len", "0", "--out", "{tmp}/b"], ["--seq-len"]),
])
def test_non_positive_sizes_are_refused(tmp_path, args, needles):
    proc = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert_user_error(proc, *needles)
    assert list(tmp_path.iterdir()) == []


def test_profile_negative_threads(bundles):
    path, _ = bundles(f"{FIXTURES}:gcn")
    proc = run_cli("profile", str(path), "--threads", "-1", "--db", "none", "--quiet")
    assert_user_error(proc, "--threads must be an integer >= 0", "-1")


def test_declared_minimum_is_checked_for_the_api_too():
    with pytest.raises(LayerwiseError, match="--seq-len must be a positive integer, got 0"):
        SourceOptions(seq_len=0)
    with pytest.raises(LayerwiseError, match="--image-size"):
        from_namespace(SourceOptions, argparse.Namespace(seq_len=8, image_size=-1))
    assert SourceOptions(seq_len=1, image_size=None).seq_len == 1
