"""Text generation from a text-generation bundle, torch-free: the step graph with its KV cache
(prefill, then one token per step feeding the present cache back), the `tokenizers` library
for text, and greedy, top-k and top-p sampling with stop tokens and streaming.

A bundle is untrusted input: its `generation` section is checked for types and ranges, and the
tokenizer it names must be a listed file inside it (`runtime/bundle.py`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerwise.base.errors import BundleError, LayerwiseError
from layerwise.runtime.bundle import RECREATE, Bundle, inside, open_bundle


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy at temperature 0, else sampled from the
    temperature-scaled distribution cut to the top_k tokens (0: all) and to the smallest set
    whose probability reaches top_p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise LayerwiseError("sampling needs --temperature >= 0, --top-k >= 0 and "
                                 "0 < --top-p <= 1")


def pick(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    """The next token id from one row of logits."""
    if s.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / s.temperature
    order = np.argsort(-z, kind="stable")
    if s.top_k:
        order = order[:s.top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if s.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), s.top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])


def generation_section(b: Bundle) -> dict:
    """The manifest's generation section, checked; refuses a bundle that has none."""
    g = b.manifest.get("generation")
    if not isinstance(g, dict):
        raise BundleError(f"{b.dir} is not a text-generation bundle; compile a decoder with "
                          "`layerwise compile hf:FOLDER --task text-generation`")
    for key in ("layers", "kv_heads", "head_dim", "vocab_size", "max_seq"):
        v = g.get(key)
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31):
            raise BundleError(f"{b.dir}: generation.{key} is {v!r}, not a positive integer; "
                              f"{RECREATE}")
    eos = g.get("eos_token_ids", [])
    if not (isinstance(eos, list) and all(isinstance(t, int) and 0 <= t < g["vocab_size"]
                                          for t in eos)):
        raise BundleError(f"{b.dir}: generation.eos_token_ids is not a list of token ids; "
                          f"{RECREATE}")
    tok = g.get("tokenizer")
    if tok is not None:
        name = inside(b.dir, tok, "tokenizer")
        if name not in {f["name"] for f in b.manifest["files"]}:
            raise BundleError(f"{b.dir}: the tokenizer {name!r} is not listed with its sha256 "
                              f"in files; {RECREATE}")
    return g


class Generator:
    """Generates from a text-generation bundle (onnx: onnxruntime; openvino: its stateful
    model) with `threads` intra-op threads (0: the runtime's default)."""

    def __init__(self, bundle: str | Path | Bundle, threads: int = 0,
                 per_op: bool = False) -> None:
        from layerwise.runtime.lm_steps import STEPS

        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
        if self.bundle.target not in STEPS:
            raise BundleError(f"generation runs {' and '.join(STEPS)} text-generation "
                              f"bundles; this one is for {self.bundle.target}")
        self._setup(self.bundle.target, self.bundle.model_path,
                    generation_section(self.bundle), threads, per_op)
        self.tokenizer_path = (self.bundle.dir / self.config["tokenizer"]
                               if self.config.get("tokenizer") else None)

    @classmethod
    def unbundled(cls, target: str, model_file: Path, generation: dict,
                  threads: int = 0) -> Generator:
        """A generator over a step model and generation section not yet in a bundle (the
        compile's verification, before the bundle is written); no tokenizer."""
        self = cls.__new__(cls)
        self.bundle, self.tokenizer_path = None, None
        self._setup(target, Path(model_file), generation, threads, False)
        return self

    def _setup(self, target: str, model_file: Path, generation: dict, threads: int,
               per_op: bool) -> None:
        from layerwise.runtime.lm_steps import STEPS

        self.config = generation
        self.layers = generation["layers"]
        self.steps = STEPS[target](model_file, generation, threads, per_op)
        self.runner = self.steps.runner
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The bundle's tokenizer (the `tokenizers` library); refuses a bundle without one."""
        if self._tokenizer is None:
            path = self.tokenizer_path
            if path is None:
                raise LayerwiseError("this bundle has no tokenizer (its model folder had "
                                     "none): give token ids (--prompt-ids) instead of text")
            try:
                from tokenizers import Tokenizer
            except ImportError as e:
                raise LayerwiseError("the tokenizers package is not installed: pip install "
                                     "tokenizers") from e
            try:
                self._tokenizer = Tokenizer.from_file(str(path))
            except Exception as e:  # noqa: BLE001 - the library raises its own types
                raise BundleError(f"{path} is not a tokenizer the "
                                  f"tokenizers library reads ({str(e)[:200]}); "
                                  f"{RECREATE}") from e
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def reset(self) -> None:
        """Start a new sequence (an empty cache)."""
        self.steps.reset()

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """Append the tokens `ids [1, S]` to the sequence; returns their logits [1, S, V]."""
        return self.steps.step(np.asarray(ids, np.int64))

    def check_length(self, prompt_tokens: int, new_tokens: int) -> None:
        limit = self.config["max_seq"]
        if prompt_tokens == 0:
            raise LayerwiseError("the prompt is empty; give at least one token")
        if prompt_tokens + new_tokens > limit:
            raise LayerwiseError(f"a prompt of {prompt_tokens} tokens plus {new_tokens} new "
                                 f"tokens exceeds the bundle's --max-seq {limit}; shorten the "
                                 "prompt, lower --max-new-tokens or recompile with a larger "
                                 "--max-seq")

    def generate_ids(self, prompt: list[int], max_new_tokens: int = 64,
                     sampling: Sampling | None = None, stop_ids: list[int] | None = None,
                     on_token: Callable[[int], Any] | None = None) -> dict:
        """Generate after the token ids `prompt`; returns the new ids, why it stopped and
        the time to the first token and of the decode steps."""
        s = sampling or Sampling()
        self.check_length(len(prompt), max_new_tokens)
        stops = set(self.config["eos_token_ids"] if stop_ids is None else stop_ids)
        rng = np.random.default_rng(s.seed)
        self.reset()
        ids = np.array([prompt], np.int64)
        new: list[int] = []
        t0 = time.perf_counter()
        ttft, reason = None, "length"
        while len(new) < max_new_tokens:
            logits = self.forward(ids)
            token = pick(logits[0, -1], s, rng)
            if ttft is None:
                ttft = time.perf_counter() - t0
            if token in stops:
                reason = "stop"
                break
            new.append(token)
            if on_token is not None:
                on_token(token)
            ids = np.array([[token]], np.int64)
        total = time.perf_counter() - t0
        return {"ids": new, "stopped": reason, "ttft_s": ttft or 0.0,
                "decode_s": total - (ttft or 0.0)}

    def generate(self, prompt: str, max_new_tokens: int = 64, sampling: Sampling | None = None,
                 stop: list[str] | None = None,
                 stream: Callable[[str], Any] | None = None) -> str:
        """The text generated after `prompt`; `stop` strings end it (not included);
        `stream` receives each new piece of text as soon as it is decoded."""
        ids = self.encode(prompt)
        shown, acc = "", []
        stopped = [False]

        def emit(token: int) -> None:
            nonlocal shown
            acc.append(token)
            text = self.decode(acc)
            cut = _stop_at(text, stop)
            if cut is not None:
                text, stopped[0] = text[:cut], True
            if stream is not None and len(text) > len(shown) and text.startswith(shown):
                stream(text[len(shown):])
            shown = text
            if stopped[0]:
                raise _Stop

        with contextlib.suppress(_Stop):
            self.generate_ids(ids, max_new_tokens, sampling, on_token=emit)
        return shown


class _Stop(Exception):
    """Ends a generation at a stop string."""


def _stop_at(text: str, stop: list[str] | None) -> int | None:
    hits = [text.find(s) for s in stop or [] if s and s in text]
    return min(hits) if hits else None
