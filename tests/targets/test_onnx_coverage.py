"""Every architecture family lifts, emits ONNX, and verifies in onnxruntime with a dynamic batch."""

from __future__ import annotations

import numpy as np
import pytest

from layerwise.runtime import open_bundle, open_runner
from tests.conftest import FIXTURES

TIMM = ["resnet18", "mobilenetv3_small_100", "convnext_atto", "vit_tiny_patch16_224"]
HF = ["bert", "gpt2", "t5", "wav2vec2", "clip"]
OWN = ["lstm_classifier", "gcn"]
# Residual blocks the layer table finds by graph structure (repeated units with a residual add),
# and the layers of a stacked LSTM (split by which layer's weights each op reads).
BLOCKS = {"resnet18": 8, "mobilenetv3_small_100": 6, "convnext_atto": 12,
          "vit_tiny_patch16_224": 12, "bert": 2, "gpt2": 2, "t5": 4, "wav2vec2": 2, "clip": 4,
          "lstm_classifier": 2, "gcn": 2}


def _check(path, manifest, batch: bool = True, name: str | None = None) -> None:
    if name is not None:
        assert len(manifest["layers"]["blocks"]) == BLOCKS[name]
    v = manifest["verification"]
    assert v["passed"] and v["rel_err"] <= 1e-4, v
    assert manifest["fidelity"]["rel_err"] <= 1e-4
    b = open_bundle(path)
    assert b.batch_dynamic() == batch
    runner = open_runner(b.target, b.model_path)
    feeds = b.example_inputs()
    full = runner.run(feeds)
    if batch:  # batch 1 runs; per-sample outputs equal row 0 of the batch-2 ones
        one = runner.run({k: v[:1] for k, v in feeds.items()})
        for a, ref in zip(one, full):
            if ref.shape[:1] == (2,) and a.shape == (1, *ref.shape[1:]):
                np.testing.assert_allclose(a[0], ref[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", TIMM)
def test_timm(bundles, name):
    path, manifest = bundles(f"timm:{name}")
    assert manifest["modality"] == "vision"
    assert manifest["inputs"][0]["shape"][0] == "batch"
    _check(path, manifest, name=name)


@pytest.mark.parametrize("name", HF)
def test_transformers(bundles, hf_folders, name):
    path, manifest = bundles(f"hf:{hf_folders[name]}")
    expected = {"wav2vec2": "audio", "clip": "multimodal"}.get(name, "text")
    assert manifest["modality"] == expected
    _check(path, manifest, name=name)


@pytest.mark.parametrize("name", OWN)
def test_own_modules(bundles, name):
    path, manifest = bundles(f"{FIXTURES}:{name}")
    # a GCN's node count and edge list are dynamic, but neither is a batch to slice
    _check(path, manifest, batch=name != "gcn", name=name)
    if name == "gcn":
        assert all(isinstance(s["shape"][0], str) for s in manifest["inputs"])
