"""`compile --task text-generation --target tflite`: one .tflite with signatures `prefill` and
`decode` over a fixed-size cache, weights stored once, run by LiteRT's signature runners;
the greedy tokens are transformers' own (tiny Llama and Qwen2 trained on real text)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from layerwise import api
from layerwise.runtime.generate import Generator
from layerwise.runtime.lm_litert import LiteRtStep
from tests.fixtures.generator_checks import (
    chunked_prefill_matches,
    generate_matches_transformers,
    hf_model,
    past_max_seq_is_refused,
)

MAX_SEQ = 64


def _compile(folder, out) -> dict:
    return api.compile(f"hf:{folder}", api.CompileOptions(
        task="text-generation", target="tflite", out=str(out), db="none", max_seq=MAX_SEQ))


@pytest.fixture(scope="module")
def llama_bundle(tiny_lms, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite-lm") / "llama"
    return out, _compile(tiny_lms["llama"], out)


def _signatures(path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    return {k: (interp.get_signature_runner(k).get_input_details(),
                interp.get_signature_runner(k).get_output_details())
            for k in interp.get_signature_list()}


def test_llama_generator_verifies_with_two_signatures_and_one_copy_of_the_weights(
        tiny_lms, llama_bundle):
    out, m = llama_bundle
    v = m["verification"]
    assert v["passed"] and v["token_agreement"] == 1.0 and v["tokens_checked"] == 32
    assert v["runtime"] == "litert" and v["rel_err"] < 1e-4
    g = m["generation"]
    assert g["cache"] == "fixed" and g["prefill_len"] == m["model"]["prefill_len"] == MAX_SEQ
    sigs = _signatures(out / "model.tflite")
    assert sorted(sigs) == ["decode", "prefill"]
    cache = [1, 2, MAX_SEQ, 16]  # [batch, kv heads, max_seq, head dim], the same every step
    for key, length in (("prefill", MAX_SEQ), ("decode", 1)):
        ins, outs = sigs[key]
        assert list(ins["tokens"]["shape"]) == [1, length] and ins["tokens"]["dtype"] == np.int32
        assert list(outs["logits"]["shape"]) == [1, length, 512]
        names = [f"kv_cache_{kv}_{i}" for i in range(4) for kv in "kv"]
        for n in names:
            assert list(ins[n]["shape"]) == cache and list(outs[n]["shape"]) == cache
    # both signatures read the same weight buffers: one copy of the float32 weights
    weights = 4 * m["sizes"]["params"]
    size = (out / "model.tflite").stat().st_size
    assert m["sizes"]["model_bytes"] == size and weights < size < 1.25 * weights
    # the manifest lists the prefill signature (subgraph 0) with example inputs that run
    assert [i["name"] for i in m["inputs"]][:2] == ["tokens", "input_pos"]
    gen = Generator(out)
    assert isinstance(gen.steps, LiteRtStep) and gen.steps.prefill_len == MAX_SEQ


def test_generate_on_the_bundle_gives_transformers_ids(tiny_lms, llama_bundle):
    generate_matches_transformers(tiny_lms["llama"], llama_bundle[0])


def test_going_past_max_seq_is_refused_with_one_line(llama_bundle):
    past_max_seq_is_refused(llama_bundle[0], MAX_SEQ)


def test_qwen2_with_tied_embeddings_stores_the_table_once(tiny_lms, tmp_path):
    m = _compile(tiny_lms["qwen2"], tmp_path / "q")
    v = m["verification"]
    assert v["passed"] and v["token_agreement"] == 1.0 and v["rel_err"] < 1e-4
    weights = 4 * m["sizes"]["params"]  # the tied table counted once
    assert weights < m["sizes"]["model_bytes"] < 1.25 * weights


def test_chunked_and_padded_prefill_leaves_the_cache_as_transformers_fills_it(tiny_lms,
                                                                              tmp_path):
    """A prefill of 16 tokens: a 40-token prompt runs as chunks of 16, 16 and 8 (+ 8 pad
    tokens, which must write nothing), then decode continues the sequence."""
    from layerwise.lm import generation_config
    from layerwise.targets.tflite.decoder import emit_tflite_decoder

    model, _ = hf_model(tiny_lms["llama"])
    generation = generation_config(model, None, MAX_SEQ)
    entry = emit_tflite_decoder(model, tmp_path, "fp32", generation, prefill_len=16)
    assert entry["prefill_len"] == 16
    step = LiteRtStep(tmp_path / entry["file"], {**generation, "prefill_len": 16})
    chunked_prefill_matches(model, step)


def test_int8_weights_quarter_the_linears_and_stay_close(tiny_lms, llama_bundle, tmp_path):
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    _, fp32 = llama_bundle
    m = api.compile(f"hf:{tiny_lms['llama']}", api.CompileOptions(
        task="text-generation", target="tflite", precision="int8-weight",
        out=str(tmp_path / "q"), db="none", max_seq=MAX_SEQ))
    v = m["verification"]
    assert v["passed"] and v["rel_err"] < 0.05 and v["teacher_forced_agreement"] >= 0.9
    # 4 blocks x 7 linears + the LM head, in both signatures, on 29 shared int8 matrices
    assert m["model"]["quantization"]["linears"] == 2 * 29
    assert m["model"]["quantization"]["matrices"] == 29
    model = flatbuffer_utils.read_model(str(tmp_path / "q" / "model.tflite"))
    fc = [i for i, oc in enumerate(model.operatorCodes)
          if oc.builtinCode == fb.BuiltinOperator.FULLY_CONNECTED]
    for sg in model.subgraphs:
        kinds = {sg.tensors[o.inputs[1]].type for o in sg.operators if o.opcodeIndex in fc}
        assert kinds == {fb.TensorType.INT8}
    # the linears at a byte a weight; the embedding table (GATHER) stays float
    assert m["sizes"]["model_bytes"] < 0.6 * fp32["sizes"]["model_bytes"]


def test_an_op_litert_does_not_register_is_a_target_error_at_emit_time(tmp_path):
    from layerwise.base.errors import TargetError
    from layerwise.targets.tflite.decoder import check_loads
    from layerwise.targets.tflite.graph import ModelBuilder, write_model

    b = ModelBuilder()
    x = b.tensor("x", (1, 4), np.float32)
    y = b.tensor("y", (3, 4), np.float32)
    b.inputs.append(x.index)
    b.op("BROADCAST_TO", [x, b.int_const([3, 4])], [y])
    b.outputs.append(y.index)
    model = b.finish("t", ["x"], ["y"])
    model.operatorCodes[0].version = 1  # LiteRT registers BROADCAST_TO from version 2
    write_model(model, tmp_path / "bad.tflite")
    with pytest.raises(TargetError, match="BROADCAST_TO") as e:
        check_loads(tmp_path / "bad.tflite")
    assert "\n" not in str(e.value)
