"""`hf:PATH` — a local Hugging Face model folder, loaded offline with eager attention."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from layerwise.base.errors import SourceError
from layerwise.sources.source import (
    BATCH,
    Source,
    example_images,
    example_text,
    offline_hub,
)
from layerwise.spec import SourceOptions


def load_hf_folder(path: str, opts: SourceOptions) -> Source:
    """Load config + weights from a folder; example inputs follow the model's main input."""
    offline_hub()
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise SourceError(f"{path!r} is not a Hugging Face model folder (no config.json)")
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError as e:
        raise SourceError("transformers is not installed: pip install 'layerwise[compile]'") from e
    _check_config(folder / "config.json")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - only the folder's config.json is read here
        raise SourceError(f"{folder / 'config.json'} is not a config transformers can read "
                          f"({_first_line(e)}); fix it or re-save it with "
                          "config.save_pretrained") from e
    for attr in ("use_cache",):
        if hasattr(config, attr):
            setattr(config, attr, False)
    task, auto = "feature-extraction", AutoModel
    head = _head(config)
    if head:  # the folder's own class: keep its head (LM logits, class logits, masks)
        import transformers

        task, auto = head[0], getattr(transformers, head[1])
    try:
        model = auto.from_pretrained(folder, config=config, local_files_only=True,
                                     attn_implementation="eager")
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        raise SourceError(f"cannot load the model in {path!r}: {_first_line(e)}") from e
    tokenizer, notes = _tokenizer(folder, config)
    inputs, modality = _inputs(model, config, tokenizer, opts, notes)
    return Source(path, model, inputs, modality, task, notes, tokenizer=tokenizer)


_HEADS = {  # architecture suffix -> (task, auto class) of the heads kept as saved
    "ForCausalLM": ("text-generation", "AutoModelForCausalLM"),
    "LMHeadModel": ("text-generation", "AutoModelForCausalLM"),
    "ForAudioClassification": ("classification", "AutoModelForAudioClassification"),
    "ForImageClassification": ("classification", "AutoModelForImageClassification"),
    "ForSequenceClassification": ("classification", "AutoModelForSequenceClassification"),
    "ForSemanticSegmentation": ("semantic-segmentation", "AutoModelForSemanticSegmentation"),
}


def _head(config) -> tuple[str, str] | None:
    for arch in getattr(config, "architectures", None) or []:
        for suffix, head in _HEADS.items():
            if arch.endswith(suffix):
                return head
    return None


def is_causal_lm(config) -> bool:
    """Whether the config names a decoder with its language-modelling head."""
    return any(a.endswith(("ForCausalLM", "LMHeadModel"))
               for a in getattr(config, "architectures", None) or [])


def _first_line(e: BaseException) -> str:
    """The first line of an error, followed by its cause's where it ends in a colon."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    if line.endswith(":") and e.__cause__ is not None:
        line = f"{line} {_first_line(e.__cause__)}"
    return line


def _check_config(path: Path) -> None:
    """Refuse a config.json that is not a JSON object or names a model_type transformers
    does not know, saying what is wrong with it."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SourceError(f"{path} is not UTF-8 text; re-save it with "
                          "config.save_pretrained") from e
    except json.JSONDecodeError as e:
        raise SourceError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column "
                          f"{e.colno}); fix it or re-save it with config.save_pretrained") from e
    if not isinstance(data, dict):
        raise SourceError(f"{path} holds a JSON {type(data).__name__}, not an object; a "
                          'Hugging Face config is {"model_type": ..., ...}')
    kind = data.get("model_type")
    if kind is not None and (not isinstance(kind, str) or kind not in CONFIG_MAPPING):
        raise SourceError(f"{path} has model_type {kind!r}, which transformers "
                          f"{transformers.__version__} does not know; fix model_type or "
                          "upgrade transformers")


def _tokenizer(folder: Path, config):
    names = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    if not any((folder / f).exists() for f in names):
        return None, []
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True), []
    except (OSError, ValueError) as e:
        return None, [f"tokenizer in folder did not load ({str(e).splitlines()[0]})"]


def _text_inputs(config, tokenizer, opts: SourceOptions,
                 notes: list[str]) -> dict[str, torch.Tensor]:
    if tokenizer is not None:
        inputs = example_text(tokenizer, opts.seq_len)
        vocab = getattr(config, "vocab_size", None)
        if vocab is not None and int(inputs["input_ids"].max()) >= vocab:
            raise SourceError(f"the folder's tokenizer produces ids beyond vocab_size={vocab}")
        return inputs
    notes.append("no tokenizer in folder: example inputs are synthetic token ids")
    gen = torch.Generator().manual_seed(0)
    vocab = getattr(config, "vocab_size", 1000)
    ids = torch.randint(5, vocab, (BATCH, opts.seq_len), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _inputs(model, config, tokenizer, opts: SourceOptions, notes: list[str]):
    main = getattr(model, "main_input_name", "input_ids")
    if hasattr(config, "text_config") and hasattr(config, "vision_config"):
        inputs = _text_inputs(config.text_config, tokenizer, opts, notes)
        size = config.vision_config.image_size
        inputs["pixel_values"] = example_images(opts.image_size or size)
        return inputs, "multimodal"
    if main == "pixel_values":
        size = getattr(config, "image_size", 224)
        return {"pixel_values": example_images(opts.image_size or size)}, "vision"
    if main == "input_values":
        return {"input_values": _speechlike(16000 // 2)}, "audio"
    if main == "input_features":  # Whisper-style log-mel frames, two per encoder position
        return {"input_features": _log_mel(config)}, "audio"
    inputs = _text_inputs(config, tokenizer, opts, notes)
    if getattr(config, "is_encoder_decoder", False):
        start = getattr(config, "decoder_start_token_id", None) or 0
        ids = inputs["input_ids"]
        inputs["decoder_input_ids"] = torch.cat(
            [torch.full((ids.shape[0], 1), start, dtype=ids.dtype), ids[:, :-1]], dim=1)
    return inputs, "text"


def _log_mel(config) -> torch.Tensor:
    """Whisper's log-mel features of speech-like waveforms, as long as the encoder takes."""
    from transformers import WhisperFeatureExtractor

    frames = 2 * config.max_source_positions
    fe = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    wave = _speechlike(frames * fe.hop_length).numpy()
    feats = fe(list(wave), sampling_rate=16000, return_tensors="np", padding="max_length",
               max_length=frames * fe.hop_length).input_features
    return torch.from_numpy(feats[..., :frames].copy())


def _speechlike(samples: int) -> torch.Tensor:
    """Deterministic voiced-speech-like waveforms (harmonics of a gliding pitch, 16 kHz)."""
    t = torch.arange(samples) / 16000.0
    out = []
    for b in range(BATCH):
        f0 = 110.0 + 40.0 * b + 30.0 * torch.sin(2 * math.pi * 3.0 * t)
        phase = 2 * math.pi * torch.cumsum(f0, 0) / 16000.0
        wave = sum(torch.sin(k * phase) / k for k in range(1, 6))
        out.append(wave * (0.5 + 0.5 * torch.sin(2 * math.pi * 4.0 * t)))
    x = torch.stack(out)
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)
