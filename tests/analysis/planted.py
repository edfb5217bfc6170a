"""Planted-truth models: six residual blocks each, with a known answer.

Block 1 is an exact identity (its residual branch ends in zeroed weights), block 3 is a copy of
block 2 (duplicated), block 4 is critical (its branch output scaled up). Residual MLP, CNN and
small transformer; all are lifted through the real frontend.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from layerwise.compiler.frontend import lift
from layerwise.sources import Source

IDENTITY, DUP_OF, DUPLICATE, CRITICAL = 1, 2, 3, 4
N_BLOCKS = 6
SCALE = 6.0


class MLPBlock(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, h)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class ResMLP(nn.Module):
    def __init__(self, d_in: int = 16, d: int = 32, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList([MLPBlock(d, 2 * d) for _ in range(N_BLOCKS)])
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class ConvBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(self.bn(x))))


class ResCNN(nn.Module):
    def __init__(self, c: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList([ConvBlock(c) for _ in range(N_BLOCKS)])
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x.mean((2, 3)))


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads) + bias
        y = att.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, 2 * d)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = FeedForward(d)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.mlp(self.ln2(x))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 32, heads: int = 4, t: int = 12,
                 classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, t, d) * 0.5)
        self.blocks = nn.ModuleList([TransformerBlock(d, heads) for _ in range(N_BLOCKS)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.pos
        bias = (1.0 - attention_mask[:, None, None, :].float()) * -1e4
        for b in self.blocks:
            x = b(x, bias)
        m = attention_mask[..., None].float()
        return self.head(self.norm((x * m).sum(1) / m.sum(1)))


def _branch_outputs(block: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    """The last layer of each residual branch of a block."""
    if isinstance(block, TransformerBlock):
        return [block.attn.proj, block.mlp.fc2]
    if isinstance(block, MLPBlock):
        return [block.fc2]
    return [block.conv2]


def plant(model: nn.Module) -> nn.Module:
    """Zero block IDENTITY's branch, copy block DUP_OF into DUPLICATE, scale CRITICAL's branch."""
    with torch.no_grad():
        for layer in _branch_outputs(model.blocks[IDENTITY]):
            layer.weight.zero_()
            layer.bias.zero_()
        model.blocks[DUPLICATE].load_state_dict(model.blocks[DUP_OF].state_dict())
        for layer in _branch_outputs(model.blocks[CRITICAL]):
            layer.weight.mul_(SCALE)
            layer.bias.mul_(SCALE)
    return model.eval()


def planted(kind: str, batches: int = 4, batch_size: int = 8):
    """(IR, batches, block paths) of a planted model of `kind` (mlp | cnn | transformer)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if kind == "mlp":
        model = plant(ResMLP())
        make = lambda n: {"x": torch.randn(n, 16, generator=gen)}  # noqa: E731
    elif kind == "cnn":
        model = plant(ResCNN())
        make = lambda n: {"x": torch.randn(n, 3, 8, 8, generator=gen)}  # noqa: E731
    else:
        model = plant(TinyTransformer())

        def make(n):
            ids = torch.randint(0, 50, (n, 12), generator=gen)
            mask = torch.ones(n, 12, dtype=torch.long)
            mask[: n // 2, 9:] = 0  # some padded sequences
            return {"input_ids": ids, "attention_mask": mask}
    ir = lift(Source(f"planted:{kind}", model, make(2), "tabular", "classification"))
    data = [make(batch_size) for _ in range(batches)]
    paths = [f"blocks.{i}" for i in range(N_BLOCKS)]
    return ir, data, paths
