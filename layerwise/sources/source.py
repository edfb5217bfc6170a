"""What every model source makes: the Source value, real example inputs (photos, tokenized
sentences) and the offline-hub setting. Imported by the scheme modules (hf, zoo) and the
scheme table in __init__, so none of them imports the other."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

BATCH = 2


@dataclass
class Source:
    """What a SPEC resolves to. `module` is None for a `.pt2` program (then `program` is set)."""

    spec: str
    module: nn.Module | None
    inputs: dict[str, torch.Tensor]
    modality: str  # text | vision | video | audio | multimodal | sequence | graph | tabular
    task: str = "feature-extraction"
    notes: list[str] = field(default_factory=list)
    program: Any = None  # torch.export.ExportedProgram when loaded from .pt2
    tokenizer: Any = None
    # the host-side step after the graph (detectors' NMS, runtime/detection.py): plain JSON
    postprocess: dict | None = None


def example_images(size: int | tuple[int, int], mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225), count: int = BATCH) -> torch.Tensor:
    """Real photos (scikit-image's chelsea, astronaut, coffee, ...), centre-cropped and
    normalised."""
    from skimage import data as skdata

    h, w = (size, size) if isinstance(size, int) else size
    photos = [skdata.chelsea(), skdata.astronaut(), skdata.coffee(), skdata.rocket()]
    out = []
    for i in range(count):
        img = torch.from_numpy(photos[i % len(photos)].copy()).permute(2, 0, 1).float() / 255.0
        side = min(img.shape[1:])
        top, left = (img.shape[1] - side) // 2, (img.shape[2] - side) // 2
        img = img[:, top : top + side, left : left + side]
        img = nn.functional.interpolate(img[None], size=(h, w), mode="bilinear",
                                        antialias=True, align_corners=False)[0]
        if i >= len(photos):
            img = img.flip(-1)
        out.append(img)
    x = torch.stack(out)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def example_text(tokenizer, seq_len: int, count: int = BATCH) -> dict[str, torch.Tensor]:
    """Tokenized real sentences padded to seq_len: input_ids and attention_mask."""
    from layerwise.text import stdlib_sentences

    sentences = stdlib_sentences(count)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq_len,
                    return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Random weights that are the same on every load of a SPEC (two compiles of
    `timm:resnet18`, FP32 and INT8, must quantize the same network), without touching the
    caller's random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def offline_hub() -> None:
    """Never reach a model hub: weights come from packages and local folders only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
