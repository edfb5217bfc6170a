"""What a SPEC may be and the options every source takes (torch-free, so the CLI parses in a
runtime-only install)."""

from __future__ import annotations

from dataclasses import dataclass

from layerwise.base.params import check, opt

SCHEMES = ("timm:NAME, torchvision:NAME, hf:PATH, zoo:NAME, FILE.py:factory, "
           "package.module:factory, FILE.pt2")


@dataclass(frozen=True)
class SourceOptions:
    """Options every source accepts (declared once; the CLI reads these fields)."""

    weights: str | None = opt(None, "state-dict file (.pt/.pth/.safetensors) to load")
    seq_len: int = opt(32, "token length of text example inputs", minimum=1)
    image_size: int | None = opt(None, "input size of a vision model (default: its config)",
                                 minimum=1)

    def __post_init__(self) -> None:
        check(self)
