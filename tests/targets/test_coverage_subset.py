"""The fast subset of bench/coverage_matrix.py: one model per family that once failed there,
through `layerwise.compile` on the target it failed on (tiny random configs)."""

from __future__ import annotations

import pytest

import layerwise
from layerwise.api import CompileOptions

_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
             vocab_size=300, max_position_embeddings=64)
CASES = {  # name: (model_type, config kwargs, auto class, target, what failed before)
    "roberta": ("roberta", _TEXT, "AutoModel", "tflite", "cumsum and gather"),
    "deberta-v2": ("deberta-v2", _TEXT, "AutoModel", "tflite", "bitwise_not of masks"),
    "llama": ("llama", dict(_TEXT, num_key_value_heads=1), "AutoModelForCausalLM", "openvino",
              "unconverted_ops_report"),
    "qwen2": ("qwen2", dict(_TEXT, num_key_value_heads=1), "AutoModelForCausalLM", "openvino",
              "unconverted_ops_report"),
    "gpt2": ("gpt2", dict(n_embd=32, n_layer=1, n_head=2, vocab_size=300, n_positions=64),
             "AutoModelForCausalLM", "openvino", "inputs renamed by compile_model"),
    "wav2vec2": ("wav2vec2", dict(_TEXT, conv_dim=(16, 16), conv_stride=(5, 2),
                                  conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                                  num_conv_pos_embedding_groups=2), "AutoModel", "openvino",
                 "input named after its first reader"),
    "clip": ("clip", dict(text_config=_TEXT, vision_config=dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=16), projection_dim=16), "AutoModel", "tflite",
             "pooling at each row's argmax (run-time index), image-text logits at batch 1"),
    "siglip": ("siglip", dict(text_config=_TEXT, vision_config=dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=16)), "AutoModel", "tvm",
               "text pooler x[:, -1]: TVM read the negative index out of bounds (NaN)"),
    "siglip-tflite": ("siglip", dict(text_config=_TEXT, vision_config=dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=16)), "AutoModel", "tflite",
                      "pooling head's transposed view handed its layout to its source"),
    "whisper": ("whisper", dict(d_model=32, encoder_layers=1, decoder_layers=1,
                                encoder_attention_heads=2, decoder_attention_heads=2,
                                encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=300,
                                num_mel_bins=16, max_source_positions=20,
                                max_target_positions=16, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2, decoder_start_token_id=1),
                "AutoModelForAudioClassification", "tflite", "no input_features inputs"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import torch
    import transformers

    out = {}
    for name, (model_type, kwargs, auto, _, _) in CASES.items():
        config = transformers.AutoConfig.for_model(model_type, **kwargs)
        torch.manual_seed(0)
        model = getattr(transformers, auto).from_config(config)
        out[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(out[name])
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_model_that_once_failed_verifies(folders, tmp_path, name):
    target = CASES[name][3]
    man = layerwise.compile(f"hf:{folders[name]}",
                            CompileOptions(target=target, out=str(tmp_path / "b"), db="none"))
    ver = man["verification"]
    assert ver["passed"] and ver["runtime"] == {"tflite": "litert"}.get(target, target), ver
    assert ver["rel_err"] <= 1e-4
