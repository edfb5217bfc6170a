"""`compile --task text-generation --target tvm`: one Relax VM library with functions
`prefill` and `decode` over a fixed-size cache, the weights stored once beside it, run by
runtime/lm_tvm.py; the greedy tokens are transformers' own (the tiny Llama trained on real
text)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

from layerwise import api
from layerwise.runtime.generate import Generator
from layerwise.runtime.lm_tvm import TvmStep
from tests.fixtures.generator_checks import (
    chunked_prefill_matches,
    generate_matches_transformers,
    hf_model,
    past_max_seq_is_refused,
)

MAX_SEQ = 64


@pytest.fixture(scope="module")
def llama_bundle(tiny_lms, tmp_path_factory):
    out = tmp_path_factory.mktemp("tvm-lm") / "llama"
    return out, api.compile(f"hf:{tiny_lms['llama']}", api.CompileOptions(
        task="text-generation", target="tvm", out=str(out), db="none", max_seq=MAX_SEQ))


def test_llama_generator_verifies_with_two_functions_and_one_copy_of_the_weights(
        llama_bundle):
    out, m = llama_bundle
    v = m["verification"]
    assert v["passed"] and v["token_agreement"] == 1.0 and v["tokens_checked"] == 32
    assert v["runtime"] == "tvm" and v["rel_err"] < 1e-4
    g = m["generation"]
    assert g["cache"] == "fixed" and g["prefill_len"] == m["model"]["prefill_len"] == MAX_SEQ
    spec = json.loads((out / "model.json").read_text())
    assert sorted(spec["functions"]) == ["decode", "prefill"]
    cache = [1, 2, MAX_SEQ, 16]  # [batch, kv heads, max_seq, head dim], the same every step
    for key, length in (("prefill", MAX_SEQ), ("decode", 1)):
        shapes = {io: {t["name"]: t["shape"] for t in spec["functions"][key][io]}
                  for io in ("inputs", "outputs")}
        assert shapes["inputs"]["tokens"] == [1, length]
        assert shapes["outputs"]["logits"] == [1, length, 512]
        for n in (f"kv_cache_{kv}_{i}" for i in range(4) for kv in "kv"):
            assert shapes["inputs"][n] == cache and shapes["outputs"][n] == cache
    # one copy of the float32 weights, in weights.npz; the library holds code only
    weights = 4 * m["sizes"]["params"]
    with np.load(out / "weights.npz") as z:
        assert sum(z[k].nbytes for k in z.files) == weights
    assert (out / "model.so").stat().st_size < weights + 2**21
    assert [i["name"] for i in m["inputs"]][:2] == ["tokens", "input_pos"]
    gen = Generator(out)
    assert isinstance(gen.steps, TvmStep) and gen.steps.prefill_len == MAX_SEQ


def test_generate_on_the_bundle_gives_transformers_ids(tiny_lms, llama_bundle):
    generate_matches_transformers(tiny_lms["llama"], llama_bundle[0])


def test_going_past_max_seq_is_refused_with_one_line(llama_bundle):
    past_max_seq_is_refused(llama_bundle[0], MAX_SEQ)


def test_chunked_and_padded_prefill_leaves_the_cache_as_transformers_fills_it(tiny_lms,
                                                                              tmp_path):
    """A prefill of 16 tokens: a 40-token prompt runs as chunks of 16, 16 and 8 (+ 8 pad
    tokens, which must write nothing), then decode continues the sequence."""
    from layerwise.lm import generation_config
    from layerwise.targets.tvm.decoder import emit_tvm_decoder

    model, _ = hf_model(tiny_lms["llama"])
    generation = generation_config(model, None, MAX_SEQ)
    entry = emit_tvm_decoder(model, tmp_path, "fp32", generation, prefill_len=16)
    assert entry["prefill_len"] == 16
    step = TvmStep(tmp_path / entry["file"], {**generation, "prefill_len": 16})
    chunked_prefill_matches(model, step)


def test_qwen2_with_tied_embeddings_stores_the_table_once(tiny_lms, tmp_path):
    from layerwise.lm import generation_config
    from layerwise.targets.tvm.decoder import emit_tvm_decoder

    model, _ = hf_model(tiny_lms["qwen2"])
    assert model.config.tie_word_embeddings
    generation = generation_config(model, None, 32)
    entry = emit_tvm_decoder(model, tmp_path, "fp32", generation, prefill_len=8)
    spec = json.loads((tmp_path / "model.json").read_text())
    with np.load(tmp_path / "weights.npz") as z:
        assert sum(z[k].nbytes for k in z.files) == 4 * sum(p.numel()
                                                            for p in model.parameters())
        assert len(z.files) == len(set(spec["params"])) == len(spec["params"]) - 1
    step = TvmStep(tmp_path / entry["file"], {**generation, "prefill_len": 8})
    ids = torch.randint(3, model.config.vocab_size, (1, 12),
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits[0].numpy()
    mine = np.concatenate([step.step(ids[:, :10].numpy())[0],
                           step.step(ids[:, 10:11].numpy())[0],
                           step.step(ids[:, 11:].numpy())[0]])
    assert np.linalg.norm(mine - want) / np.linalg.norm(want) < 1e-5


def test_a_one_sided_integer_clamp_gets_the_dtype_limit():
    """TVM's frontend gives a missing clamp bound as infinity, which an int32 clip cannot
    hold; the bound becomes the dtype's limit and the program computes the same."""
    from layerwise.targets.tvm.decoder import bound_integer_clamps

    class Clamp(torch.nn.Module):
        def forward(self, pos: torch.Tensor, x: torch.Tensor):
            return torch.clamp(pos, max=5), torch.clamp(x, min=0.0)

    args = (torch.arange(-3, 9, dtype=torch.int32), torch.randn(4))
    program = torch.export.export(Clamp(), args).run_decompositions()
    assert bound_integer_clamps(program) == 1  # the float clamp keeps its open bound
    clamps = [n.args for n in program.graph.nodes if n.target == torch.ops.aten.clamp.default]
    assert clamps[0][1:] == (torch.iinfo(torch.int32).min, 5) and clamps[1][2:] in ((), (None,))
    got = program.module()(*args)
    assert torch.equal(got[0], torch.clamp(args[0], max=5))
