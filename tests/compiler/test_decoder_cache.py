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
        inputs = example_step(config, seq=seq, past=past, seed=seq)
        with torch.no_grad():
            want = [t.numpy() for t in step(*inputs)]
        got = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)})
        assert got[0].shape == (1, seq, 512)
        assert got[1].shape == (1, 2, past + seq, 16)
        for g, w in zip(got, want):
            assert np.abs(g - w).max() < 1e-4
