"""The ONNX target's precisions: fp16, int8-dynamic, int8-weight, int4-weight (onnxruntime's
tools) and static int8 on transformers, each compiled, verified and checked numerically."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from layerwise import api
from layerwise.runtime import open_bundle, open_runner
from layerwise.text import stdlib_sentences

OPS = {"fp16": None, "int8-dynamic": "MatMulInteger", "int8-weight": "MatMulNBits",
       "int4-weight": "MatMulNBits"}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _outputs(path, feeds=None) -> np.ndarray:
    b = open_bundle(path)
    return open_runner(b.target, b.model_path).run(feeds or b.example_inputs())[0]


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path / "model.onnx")).graph.node}


@pytest.mark.parametrize("precision", list(OPS))
def test_bert_tiny_each_precision(bundles, hf_folders, tmp_path, precision):
    spec = f"hf:{hf_folders['bert']}"
    fp32_path, fp32 = bundles(spec)
    m = api.compile(spec, api.CompileOptions(out=str(tmp_path / "b"), precision=precision))
    assert m["precision"] == precision and m["verification"]["passed"]
    assert m["plan"]["quantize"]["precision"] == precision
    ops = _ops(tmp_path / "b")
    if OPS[precision]:
        assert OPS[precision] in ops
    else:  # fp16: half-precision weights, float32 inputs and outputs
        model = onnx.load(str(tmp_path / "b" / "model.onnx"))
        assert {i.type.tensor_type.elem_type for i in model.graph.output} == {1}
    size, base = m["sizes"]["model_bytes"], fp32["sizes"]["model_bytes"]
    # the 30522 x 32 embedding table dominates this model: only the precisions that store
    # it in fewer bits shrink the file much
    bound = {"fp16": 0.55, "int8-dynamic": 1.0, "int8-weight": 0.35, "int4-weight": 0.25}
    assert size < bound[precision] * base
    cos = _cosine(_outputs(fp32_path), _outputs(tmp_path / "b"))
    assert cos.min() > (0.9 if precision == "int4-weight" else 0.99)


def test_int4_is_smaller_and_rougher_than_int8_weights(hf_folders, tmp_path, bundles):
    spec = f"hf:{hf_folders['bert']}"
    fp32_path, _ = bundles(spec)
    ref = _outputs(fp32_path)
    err = {}
    size = {}
    for p in ("int8-weight", "int4-weight"):
        m = api.compile(spec, api.CompileOptions(out=str(tmp_path / p), precision=p))
        err[p] = float(np.abs(_outputs(tmp_path / p) - ref).mean())
        size[p] = m["sizes"]["model_bytes"]
        assert m["model"]["quantization"]["weight_bits"] == int(p[3])
    assert size["int4-weight"] < 0.7 * size["int8-weight"]
    assert err["int8-weight"] < err["int4-weight"]


@pytest.fixture(scope="module")
def sentences(tmp_path_factory):
    """Real sentences: even ones calibrate, odd ones evaluate."""
    s = stdlib_sentences()
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text("\n".join(s[0::2]) + "\n")
    return path, s[1::2]


def _encode(sentences: list[str]) -> dict[str, np.ndarray]:
    from layerwise.sources import load_source

    tok = load_source("zoo:minilm-l6").tokenizer
    enc = tok(sentences, padding="max_length", truncation=True, max_length=32,
              return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def test_minilm_static_int8_quality_and_mixed_precision(bundles, sentences, tmp_path):
    """Static int8 on real MiniLM sentences: weighted linears only, GELU-fed linears float
    (the recipe's transformer rule); keeping a block in fp32 reduces the error."""
    calib, held = sentences
    feeds = _encode(held)
    fp32_path, _ = bundles("zoo:minilm-l6")
    ref = _outputs(fp32_path, feeds)
    m = api.compile("zoo:minilm-l6", api.CompileOptions(
        out=str(tmp_path / "q"), precision="int8", data=str(calib)))
    q = m["model"]["quantization"]
    assert q["excluded_nodes"] >= 6 + 12  # 6 FFN down-projections, 12 attention matmuls
    cos_q = _cosine(ref, _outputs(tmp_path / "q", feeds))
    assert cos_q.mean() > 0.99  # NNCF's INT8 on OpenVINO: bench/compress.py
    keep = api.compile("zoo:minilm-l6", api.CompileOptions(
        out=str(tmp_path / "k"), precision="int8", data=str(calib),
        keep_fp32="bert.encoder.layer.0,bert.encoder.layer.5"))
    assert keep["model"]["quantization"]["excluded_nodes"] > q["excluded_nodes"]
    cos_k = _cosine(ref, _outputs(tmp_path / "k", feeds))
    assert (1 - cos_k.mean()) < (1 - cos_q.mean())


def test_minilm_weight_only_int8_keeps_embeddings_close(bundles, sentences, tmp_path):
    _, held = sentences
    feeds = _encode(held)
    fp32_path, fp32 = bundles("zoo:minilm-l6")
    m = api.compile("zoo:minilm-l6", api.CompileOptions(out=str(tmp_path / "w"),
                                                        precision="int8-weight"))
    ops = _ops(tmp_path / "w")
    # linears in MatMulNBits; the embedding tables int8, gathered row by row (the lookup
    # dequantizes only the rows it reads)
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and "DequantizeLinear" not in ops
    assert m["model"]["quantization"]["quantized_nodes"] == 36 + 3
    assert m["sizes"]["model_bytes"] < 0.35 * fp32["sizes"]["model_bytes"]
    cos = _cosine(_outputs(fp32_path, feeds), _outputs(tmp_path / "w", feeds))
    assert cos.mean() > 0.999


def test_fp16_cnn_halves_the_file(bundles, tmp_path):
    fp32_path, fp32 = bundles("zoo:mobilenet-v2")
    m = api.compile("zoo:mobilenet-v2", api.CompileOptions(out=str(tmp_path / "h"),
                                                           precision="fp16"))
    assert m["sizes"]["model_bytes"] < 0.55 * fp32["sizes"]["model_bytes"]
    a, b = _outputs(fp32_path), _outputs(tmp_path / "h")
    assert (a.argmax(1) == b.argmax(1)).all()


def test_weight_only_needs_linears_and_unknown_precision_is_refused(tmp_path):
    from layerwise.base.errors import LayerwiseError

    with pytest.raises(LayerwiseError, match="offers"):
        api.compile("zoo:mobilenet-v2", api.CompileOptions(out=str(tmp_path / "a"),
                                                           precision="int3"))
    assert not (tmp_path / "a").exists()
