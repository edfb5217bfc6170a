"""The host calibration set: single ops, small layers and small multi-layer blocks.

Single ops pin the peaks and each op kind's efficiency; the blocks (an attention block, a
post-norm encoder layer, inverted residuals with and without squeeze-excite, a ConvNeXt block,
a residual basic block, MLPs and conv stacks whose weights exceed the core's L2 or all the
caches, a small GRU) bring what single ops miss: activations that leave the cache between
ops, weights re-read from the LLC or DRAM, the per-op costs of long chains, the real mix of
fused and separate kernels. All are built here with random weights and none is a
model `bench/predict.py` judges the fit on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """One calibration model: a name and a builder returning (module, example inputs), or
    (`exported`) one returning an exported program with a dynamic batch and its inputs at
    batch 1, for a program that a pass has already rewritten."""

    name: str
    build: Callable[[], tuple] | None = None
    exported: Callable[[], tuple] | None = None


def calibration_cases() -> list[Case]:
    import torch
    from torch import nn

    def conv(cin, cout, hw, k=3, *, stride=1, groups=1, act=nn.ReLU, repeat=1):
        def build():
            layers = []
            for _ in range(repeat):
                layers += [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                           nn.BatchNorm2d(cout)]
                if act is not None:
                    layers.append(act())
            return nn.Sequential(*layers), (torch.randn(1, cin, hw, hw),)
        return build

    def linear(tokens, k, n, act=None):
        def build():
            layers = [nn.Linear(k, n)] + ([act()] if act else [])
            return nn.Sequential(*layers), (torch.randn(1, tokens, k),)
        return build

    class Attention(nn.Module):
        def forward(self, q, k, v):
            a = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
            return a @ v

    def attention(heads, seq, dim):
        return lambda: (Attention(), tuple(torch.randn(1, heads, seq, dim) for _ in range(3)))

    class Fn(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, *xs):
            return self.fn(*xs)

    def fn(f, *shapes):
        return lambda: (Fn(f), tuple(torch.randn(*s) for s in shapes))

    def module(factory, *shapes):
        return lambda: (factory(), tuple(torch.randn(*s) for s in shapes))

    def embedding(vocab, dim, tokens):
        return lambda: (nn.Embedding(vocab, dim), (torch.randint(0, vocab, (1, tokens)),))

    cases = [
        Case("gemm-peak", linear(256, 512, 512)),
        Case("stream-add", fn(lambda x: x + 1.0, (1, 1 << 24))),  # 128 MiB: DRAM
        Case("stream-add-cache", fn(lambda x: x + 1.0, (1, 1 << 18))),  # 2 MiB: cache
        Case("stem-conv", conv(3, 32, 224, stride=2, act=nn.ReLU6)),
    ]
    cases += [Case(f"conv3x3-{c}x{hw}", conv(c, c, hw))
              for c, hw in ((16, 112), (32, 56), (64, 56), (128, 28), (256, 14), (512, 7))]
    cases += [Case(f"conv1x1-{a}-{b}x{hw}", conv(a, b, hw, k=1, act=None))
              for a, b, hw in ((32, 192, 56), (144, 24, 56), (96, 576, 14), (320, 1280, 7),
                               (64, 256, 28))]
    cases += [Case(f"dwconv-{c}x{hw}s{s}", conv(c, c, hw, stride=s, groups=c, act=nn.ReLU6))
              for c, hw, s in ((32, 112, 1), (144, 56, 2), (192, 28, 1), (384, 14, 1),
                               (960, 7, 1))]
    cases += [Case("conv3x3-chain4", conv(32, 32, 28, repeat=4)),
              Case("dwconv-chain4", conv(64, 64, 14, groups=64, act=nn.ReLU6, repeat=4))]
    cases += [Case(f"linear-{t}x{k}x{n}{'-gelu' if a else ''}", linear(t, k, n, a))
              for t, k, n, a in ((32, 384, 384, None), (32, 384, 1536, nn.GELU),
                                 (32, 1536, 384, None), (197, 192, 576, None),
                                 (197, 192, 768, nn.GELU), (197, 768, 192, None),
                                 (1, 512, 1000, None), (1, 1280, 1000, None),
                                 (64, 256, 256, None))]
    cases += [Case(f"attention-{h}x{s}x{d}", attention(h, s, d))
              for h, s, d in ((12, 32, 32), (3, 197, 64), (4, 64, 64))]
    cases += [
        Case("softmax-3x197", fn(lambda x: torch.softmax(x, -1), (1, 3, 197, 197))),
        Case("softmax-12x32", fn(lambda x: torch.softmax(x, -1), (1, 12, 32, 32))),
        Case("layernorm-32x384", module(lambda: nn.LayerNorm(384), (1, 32, 384))),
        Case("layernorm-197x192", module(lambda: nn.LayerNorm(192), (1, 197, 192))),
        Case("layernorm-197x768", module(lambda: nn.LayerNorm(768), (1, 197, 768))),
        # narrow rows: the per-row cost (graph_ops.ROW_FLOPS) against the per-element one
        Case("layernorm-3136x32", module(lambda: nn.LayerNorm(32), (1, 3136, 32))),
        Case("add-64x56", fn(torch.add, (1, 64, 56, 56), (1, 64, 56, 56))),
        Case("add-256x14", fn(torch.add, (1, 256, 14, 14), (1, 256, 14, 14))),
        Case("add-32x384", fn(torch.add, (1, 32, 384), (1, 32, 384))),
        Case("mul-relu-128x28", fn(lambda x: torch.relu(x * 0.5), (1, 128, 28, 28))),
        Case("gelu-197x768", fn(nn.functional.gelu, (1, 197, 768))),
        Case("sigmoid-96x56", fn(torch.sigmoid, (1, 96, 56, 56))),
        Case("maxpool-64x112", module(lambda: nn.MaxPool2d(3, 2, 1), (1, 64, 112, 112))),
        Case("avgpool-512x7", module(lambda: nn.AdaptiveAvgPool2d(1), (1, 512, 7, 7))),
        Case("avgpool-1280x7", module(lambda: nn.AdaptiveAvgPool2d(1), (1, 1280, 7, 7))),
        Case("mean-197x192", fn(lambda x: x.mean(-1), (1, 197, 192))),
        Case("permute-197x3x64", fn(lambda x: x.permute(0, 2, 1, 3).contiguous() + 0.0,
                                    (1, 197, 3, 64))),
        Case("cat-64x28", fn(lambda a, b: torch.cat([a, b], 1), (1, 64, 28, 28),
                             (1, 64, 28, 28))),
        Case("embedding-30522x384", embedding(30522, 384, 32)),
        # tiny ops: the per-inference and per-op overheads
        Case("tiny-add", fn(lambda x: x + 1.0, (1, 64))),
        Case("tiny-chain-32", fn(_chain, (1, 64))),
        Case("tiny-chain-96", fn(lambda x: _chain(_chain(_chain(x))), (1, 64))),
        # a chain of tiny GEMMs: a matmul kernel's own launch cost
        Case("tiny-linear-chain-12", module(lambda: nn.Sequential(*[
            nn.Sequential(nn.Linear(48, 48), nn.ReLU()) for _ in range(12)]), (1, 48))),
        Case("tanh-96x28", fn(torch.tanh, (1, 96, 28, 28))),
        Case("hardswish-96x28", fn(nn.functional.hardswish, (1, 96, 28, 28))),
        Case("silu-96x28", fn(nn.functional.silu, (1, 96, 28, 28))),
        Case("exp-12x32", fn(torch.exp, (1, 12, 32, 32))),
    ]
    return cases + block_cases()


def _chain(x):
    """32 dependent elementwise ops on a tiny tensor."""
    for _ in range(16):
        x = (x * 1.01 - 0.5).abs()
    return x




def block_cases() -> list[Case]:
    """Small multi-layer blocks (see the module docstring)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Attention(nn.Module):  # pre-norm block with fused-attention SDPA, as timm's ViT
        def __init__(self, dim, heads, hidden):
            super().__init__()
            self.heads = heads
            self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

        def forward(self, x):
            b, n, c = x.shape
            qkv = self.qkv(self.n1(x)).reshape(b, n, 3, self.heads, c // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
            x = x + self.proj(a)
            return x + self.fc2(F.gelu(self.fc1(self.n2(x))))

    class Encoder(nn.Module):  # post-norm layer with a padding mask, as BERT's
        def __init__(self, dim, heads, hidden):
            super().__init__()
            self.heads = heads
            self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
            self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

        def forward(self, x, mask):
            b, n, c = x.shape

            def split(t):
                return t.view(b, n, self.heads, -1).permute(0, 2, 1, 3)

            s = split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) / 8.0
            s = s + (1.0 - mask[:, None, None, :]) * -10000.0
            a = (s.softmax(-1) @ split(self.v(x))).permute(0, 2, 1, 3).reshape(b, n, c)
            x = self.n1(x + self.o(a))
            return self.n2(x + self.fc2(F.gelu(self.fc1(x))))

    class EncoderStack(nn.Module):
        def __init__(self, *layers):
            super().__init__()
            self.layers = nn.ModuleList(layers)

        def forward(self, x, mask):
            for layer in self.layers:
                x = layer(x, mask)
            return x

    def cbn(cin, cout, k=1, *, stride=1, groups=1, act=None):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, *([act()] if act else []))

    class Inverted(nn.Module):  # MobileNetV2 / V3 inverted residual, optional SE
        def __init__(self, c, e, k=3, act=nn.ReLU6, se=False):
            super().__init__()
            self.expand = cbn(c, e, act=act)
            self.dw = cbn(e, e, k, groups=e, act=act)
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(e, e // 4, 1),
                                    nn.ReLU(), nn.Conv2d(e // 4, e, 1),
                                    nn.Hardsigmoid()) if se else None
            self.project = cbn(e, c)

        def forward(self, x):
            h = self.dw(self.expand(x))
            if self.se is not None:
                h = h * self.se(h)
            return x + self.project(h)

    class ConvNeXt(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.norm = nn.LayerNorm(c)
            self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
            self.gamma = nn.Parameter(torch.full((c,), 1e-1))

        def forward(self, x):
            h = self.dw(x).permute(0, 2, 3, 1)
            h = self.gamma * self.fc2(F.gelu(self.fc1(self.norm(h))))
            return x + h.permute(0, 3, 1, 2)

    class Basic(nn.Module):  # ResNet basic block
        def __init__(self, c):
            super().__init__()
            self.a, self.b = cbn(c, c, 3, act=nn.ReLU), cbn(c, c, 3)

        def forward(self, x):
            return torch.relu(x + self.b(self.a(x)))

    class Gru(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(24, 48, batch_first=True)

        def forward(self, x):
            return self.gru(x)[0]

    def build(factory, *shapes, mask=False):
        def make():
            inputs = tuple(torch.randn(*s) for s in shapes)
            if mask:
                inputs += (torch.ones(shapes[0][0], shapes[0][1]),)
            return factory().eval(), inputs
        return make

    def seq(*factories):
        return lambda: nn.Sequential(*(f() for f in factories))

    return [
        Case("block-attention-65x128", build(lambda: Attention(128, 4, 512), (1, 65, 128))),
        Case("block-encoder-48x256", build(lambda: Encoder(256, 4, 1024), (1, 48, 256),
                                           mask=True)),
        Case("block-inverted-2x24x28", build(seq(lambda: Inverted(24, 144),
                                                 lambda: Inverted(24, 144)), (1, 24, 28, 28))),
        # a deeper stack at a high resolution: activations that leave the core's L2
        Case("block-inverted-3x32x56", build(seq(*[lambda: Inverted(32, 128)] * 3),
                                             (1, 32, 56, 56))),
        Case("block-inverted-se-40x14", build(lambda: Inverted(40, 240, 5, nn.Hardswish, True),
                                              (1, 40, 14, 14))),
        Case("block-convnext-64x28", build(lambda: ConvNeXt(64), (1, 64, 28, 28))),
        Case("block-basic-96x28", build(lambda: Basic(96), (1, 96, 28, 28))),
        Case("block-mlp-dram-8x2048", build(seq(*[lambda: nn.Sequential(
            nn.Linear(2048, 4096), nn.GELU(), nn.Linear(4096, 2048))] * 2), (1, 8, 2048))),
        Case("block-gru-12x24", build(Gru, (1, 12, 24))),
        # a stack of encoder layers whose weights (39 MiB) stream from DRAM on every run
        Case("block-encoder-stack-dram-8x24x320", build(
            lambda: EncoderStack(*(Encoder(320, 5, 1280) for _ in range(8))), (1, 24, 320),
            mask=True)),
        # weights past the core's L2 but inside the last-level cache, and past that: a graph
        # whose weights do not stay in L2 between runs re-reads them at each op, as a model does
        Case("block-pw-stack-llc-512x7", build(seq(*[lambda: cbn(512, 512, act=nn.ReLU)] * 6),
                                               (1, 512, 7, 7))),
        Case("block-linear-stack-llc-32x768", build(seq(*[lambda: nn.Sequential(
            nn.Linear(768, 768), nn.GELU())] * 6), (1, 32, 768))),
        Case("block-linear-stack-dram-32x1024", build(seq(*[lambda: nn.Sequential(
            nn.Linear(1024, 1536), nn.GELU(), nn.Linear(1536, 1024))] * 5), (1, 32, 1024))),
    ]
