"""The real pretrained models keep their real behaviour through the ONNX artifact."""

from __future__ import annotations

import numpy as np

from layerwise.runtime import open_bundle, open_runner


def test_minilm_paraphrases_closer_than_unrelated(bundles):
    from layerwise.sources import load_source

    path, manifest = bundles("zoo:minilm-l6")
    assert manifest["verification"]["rel_err"] <= 1e-4
    assert [b["path"] for b in manifest["layers"]["blocks"]] == [
        f"bert.encoder.layer.{i}" for i in range(6)]
    tok = load_source("zoo:minilm-l6").tokenizer
    sentences = [
        "The cat sat on the mat.",
        "A cat was sitting on the rug.",
        "Stock markets fell sharply after the interest rate decision.",
        "Shares dropped steeply once the central bank raised rates.",
    ]
    enc = tok(sentences, padding="max_length", max_length=32, truncation=True, return_tensors="np")
    b = open_bundle(path)
    runner = open_runner(b.target, b.model_path)
    emb = runner.run({"input_ids": enc["input_ids"].astype(np.int64),
                      "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
    sim = emb @ emb.T
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    assert sim[2, 3] > sim[2, 0] + 0.3 and sim[2, 3] > sim[2, 1] + 0.3


def test_mobilenet_labels_chelsea_as_a_cat(bundles):
    path, manifest = bundles("zoo:mobilenet-v2")
    assert manifest["verification"]["rel_err"] <= 1e-4
    assert len(manifest["layers"]["blocks"]) == 10  # the inverted residuals with a skip add
    b = open_bundle(path)
    x = b.example_inputs()["x"]  # row 0 is scikit-image's chelsea photo
    logits = open_runner(b.target, b.model_path).run({"x": x[:1]})[0]
    assert 281 <= int(logits[0].argmax()) <= 285  # ImageNet's domestic cat classes
