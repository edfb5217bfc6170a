"""Shared fixtures: small Hugging Face folders and bundles compiled once per test run."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests record into a throw-away results history, never the user's ~/.layerwise/runs.db.
os.environ["LAYERWISE_DB"] = os.path.join(tempfile.mkdtemp(prefix="layerwise-db-"), "runs.db")
# ... and a throw-away list of the native libraries compiled here (runtime/native_trust.py).
os.environ["LAYERWISE_TRUST"] = os.path.join(os.path.dirname(os.environ["LAYERWISE_DB"]),
                                             "trusted-native")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "models.py"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")


def _small_configs():
    from transformers import BertConfig, CLIPConfig, GPT2Config, T5Config, Wav2Vec2Config

    vocab = 30522  # the MiniLM WordPiece tokenizer is copied into text folders
    return {
        "bert": BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=64),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64),
        "t5": T5Config(vocab_size=vocab, d_model=32, d_kv=8, num_heads=4, d_ff=64,
                       num_layers=2, num_decoder_layers=2, decoder_start_token_id=0),
        "wav2vec2": Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, conv_dim=(32, 32),
                                   conv_stride=(5, 2), conv_kernel=(10, 3),
                                   num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                                   do_stable_layer_norm=True, vocab_size=32),
        "clip": CLIPConfig(
            text_config={"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "intermediate_size": 64,
                         "max_position_embeddings": 64},
            vision_config={"hidden_size": 32, "image_size": 32, "patch_size": 8,
                           "num_hidden_layers": 2, "num_attention_heads": 2,
                           "intermediate_size": 64},
            projection_dim=16),
    }


@pytest.fixture(scope="session")
def hf_folders(tmp_path_factory) -> dict[str, Path]:
    """Small randomly initialised transformers saved as local folders (the `hf:PATH` source)."""
    import torch
    from transformers import AutoModel

    from layerwise.sources.zoo import minilm_path

    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, config in _small_configs().items():
        torch.manual_seed(0)
        folder = root / name
        AutoModel.from_config(config).save_pretrained(folder)
        if name != "wav2vec2":
            for f in TOKENIZER_FILES:
                if (minilm_path() / f).exists():
                    shutil.copy(minilm_path() / f, folder / f)
        out[name] = folder
    return out


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """compile(spec) -> manifest, cached per spec so each model is exported once per run."""
    from layerwise import api

    root = tmp_path_factory.mktemp("bundles")
    cache: dict[tuple[str, str], tuple[Path, dict]] = {}

    def get(spec: str, target: str = "onnx") -> tuple[Path, dict]:
        if (spec, target) not in cache:
            out = root / f"b{len(cache)}"
            opts = api.CompileOptions(target=target, out=str(out))
            cache[spec, target] = (out, api.compile(spec, opts))
        return cache[spec, target]

    return get


@pytest.fixture(scope="session")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """Environment with the demo plugin package (tests/fixtures/plugin) pip-installed into a
    throw-away site folder on PYTHONPATH; installed once per test run."""
    import subprocess
    import sys

    site = tmp_path_factory.mktemp("plugin") / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-build-isolation", "--target", str(site),
                           str(ROOT / "tests" / "fixtures" / "plugin")],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {**os.environ, "PYTHONPATH": str(site)}


@pytest.fixture(scope="session")
def tiny_lms(tmp_path_factory) -> dict[str, Path]:
    """Tiny Llama and Qwen2 LMs trained in seconds on the licence texts (tests/fixtures/
    tiny_lm.py), as Hugging Face folders with their tokenizers."""
    from tests.fixtures.tiny_lm import build

    root = tmp_path_factory.mktemp("lm")
    return {"llama": build(root / "llama", "llama"),
            "qwen2": build(root / "qwen2", "qwen2", layers=2, steps=60)}


@pytest.fixture(scope="session")
def lm_bundle(tiny_lms, tmp_path_factory) -> Path:
    """The tiny Llama compiled once as an fp32 onnx generator."""
    from layerwise import api

    out = tmp_path_factory.mktemp("lm-bundle") / "fp32"
    api.compile(f"hf:{tiny_lms['llama']}", api.CompileOptions(
        task="text-generation", out=str(out), db="none"))
    return out


@pytest.fixture(scope="session")
def mlp_data(tmp_path_factory) -> Path:
    """96 random rows for tests/fixtures/models.py's residual_mlp (16 features), as .npz."""
    import numpy as np

    path = tmp_path_factory.mktemp("mlp-data") / "x.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(96, 16)).astype(np.float32))
    return path
