"""The decoder step graph written by onnxruntime-genai's model builder: the fused form
onnxruntime runs fastest (GroupQueryAttention with rotary embedding inside, packed QKV and
gate/up projections, SkipSimplifiedLayerNormalization), with the same inputs and outputs as
our torch.export step (`input_ids`, `attention_mask`, `past_key_values.N.*` -> `logits`,
`present.N.*`). The builder reads a Hugging Face folder, so the (pruned, healed) model is
saved to one first; the graph is written at fp32 and layerwise's own weight tools
(targets/onnx/precisions.py) lower it, so precisions and int4-mixed are the same on both
graphs. Used for the architectures the builder knows; the others, and targets whose runtime
lacks onnxruntime's contrib ops (OpenVINO, TensorRT), take the torch.export graph."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from layerwise.base.errors import TargetError

# causal LMs whose graph the builder writes (its create_model dispatch), by architecture
ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
    "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM",
    "GraniteForCausalLM", "OlmoForCausalLM", "SmolLM3ForCausalLM"})


def builder_available() -> bool:
    try:
        import onnxruntime_genai.models.builder  # noqa: F401
    except ImportError:
        return False
    return True


def builds(model: torch.nn.Module) -> bool:
    """Whether the builder writes this model's graph (its architecture, and the builder
    installed). Phi-3 with a long-context RoPE takes another builder class: left out."""
    config = model.config
    arch = type(model).__name__
    if arch not in ARCHITECTURES or not builder_available():
        return False
    return not (arch == "Phi3ForCausalLM" and getattr(
        config, "original_max_position_embeddings", None) not in (
            None, config.max_position_embeddings))


def build_step(model: torch.nn.Module, out: Path) -> Path:
    """Write the fp32 step graph of `model` to `out`/model.onnx (+ model.onnx.data); returns
    its path. Assumes `builds(model)`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hf"
        model.save_pretrained(folder, safe_serialization=True)
        _placeholder_tokenizer(folder)
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder),
               "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(Path(tmp) / "cache")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        raise TargetError("onnxruntime-genai's model builder failed on this model: "
                          f"{(lines or ['no output'])[-1][:300]}")
    for extra in ("genai_config.json", "tokenizer.json", "tokenizer_config.json"):
        (out / extra).unlink(missing_ok=True)  # the bundle writes its own
    return out / "model.onnx"


def _placeholder_tokenizer(folder: Path) -> None:
    """The builder also copies the folder's tokenizer next to its graph, a side output the
    bundle does not use (it writes the user's own): a one-token fast tokenizer stands in so
    that step loads whatever tokenizer, if any, the model came with."""
    import json

    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")).save(
        str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>"}))


def name_layers(graph, layers: int) -> int:
    """Prefix the builder's nodes of decoder block N (`/model/layers.N/...`) with `layers.N/`,
    as name_layers does for the torch.export graph (the builder files the final norm under
    `layers.<count>`: not a block); in place, returns how many."""
    pattern = re.compile(r"/layers\.(\d+)/")
    named = 0
    for node in graph.graph.node:
        m = pattern.search(node.name)
        if m and int(m.group(1)) < layers:
            node.name = f"layers.{m.group(1)}/{node.name}"
            named += 1
    return named
