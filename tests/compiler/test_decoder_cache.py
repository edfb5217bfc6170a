"""A decoder step with its KV cache as tensors exports once and serves prefill and decode:
onnxruntime's logits and present cache match transformers' at another sequence and past
length than the export's example."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layerwise.compiler.decoder import KVStep, cache_shape, example_step, export_step


def _configs():
    from transformers import LlamaConfig, Qwen2Config

    common = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 128}
    return {"llama": LlamaConfig(**common), "qwen2": Qwen2Config(**common)}


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_one_graph_serves_prefill_and_decode(tmp_path, name):
    import onnxruntime as ort
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = _configs()[name]
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    assert cache_shape(config) == (2, 2, 16)
    ep = export_step(model, example_step(config))
    path = tmp_path / "step.onnx"
    torch.onnx.export(ep, example_step(config), str(path), dynamo=True, external_data=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = KVStep(model)
    for seq, past in ((6, 1), (1, 9)):  # a prefill, then a decode step on a longer past
        inputs = example_step(config, batch=1, seq=seq, past=past, seed=seq)
        with torch.no_grad():
            want = [t.numpy() for t in step(*inputs)]
        got = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)})
        assert got[0].shape == (1, seq, 512)
        assert got[1].shape == (1, 2, past + seq, 16)
        for g, w in zip(got, want):
            assert np.abs(g - w).max() < 1e-4


def test_greedy_tokens_from_an_empty_cache_equal_transformers_generate(tmp_path):
    """Prefill from a zero-length past, then one token per step feeding the present cache
    back: the same 12 tokens as transformers' own greedy generate."""
    import onnxruntime as ort
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = _configs()["llama"]
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    path = tmp_path / "step.onnx"
    torch.onnx.export(export_step(model, example_step(config)), example_step(config),
                      str(path), dynamo=True, external_data=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    prompt = torch.randint(0, 512, (1, 5), generator=torch.Generator().manual_seed(3))
    want = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                          do_sample=False)[0, 5:].tolist()
    layers, kv, head_dim = cache_shape(config)
    past = [np.zeros((1, kv, 0, head_dim), np.float32) for _ in range(2 * layers)]
    ids, got = prompt.numpy(), []
    for _ in range(12):
        mask = np.ones((1, past[0].shape[2] + ids.shape[1]), np.int64)
        out = sess.run(None, dict(zip(names, [ids, mask, *past])))
        got.append(int(out[0][0, -1].argmax()))
        past, ids = out[1:], np.array([[got[-1]]], np.int64)
    assert got == want


def _more_configs():
    import transformers as T

    c = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 128}
    return {"mistral": T.MistralConfig(**c), "gemma3": T.Gemma3TextConfig(**c, head_dim=16),
            "phi3": T.Phi3Config(**c, pad_token_id=0), "qwen3": T.Qwen3Config(**c, head_dim=16),
            "gpt2": T.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4,
                                 n_positions=128, bos_token_id=0, eos_token_id=1)}


@pytest.mark.parametrize("name", ["mistral", "gemma3", "phi3", "qwen3", "gpt2"])
def test_decoders_generate_as_transformers(tmp_path, name):
    """Mistral, Gemma 3 (sliding window, soft norms), Phi-3 (fused qkv), Qwen3 (q/k norms),
    GPT-2 (learned positions): the emitted step generates transformers' greedy tokens."""
    from transformers import AutoModelForCausalLM

    from layerwise.lm import generation_config, verify
    from layerwise.targets.onnx.decoder import emit_decoder

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_more_configs()[name],
                                             attn_implementation="eager").eval()
    emit_decoder(model, tmp_path, "fp32", None)
    r = verify("onnx", tmp_path / "model.onnx", generation_config(model, None, 128), model,
               [[5, 6, 7, 8, 9]], tolerance=1e-4, exact=True, steps=8)
    assert r["passed"] and r["token_agreement"] == 1.0, r
