"""What the fixed-size-cache generators (LiteRT, TVM) share: batch 1, the `--max-seq` bound,
one token by `decode`, more by `prefill` in chunks of its length with the last chunk padded.
Pad tokens take the position `max_seq`, which the graphs write nowhere. Torch-free."""

from __future__ import annotations

import numpy as np

from layerwise.base.errors import BundleError


class FixedCacheStep:
    """Subclasses set `runtime` (a name for messages), `max_seq`, `prefill_len` and
    `length`, and implement `_run(key, tokens [1, T] int32, used) -> logits of the used
    tokens`, which advances `length` by `used`."""

    runtime = "this"
    max_seq = prefill_len = length = 0

    def check_batch(self, batch: int) -> None:
        if batch != 1:
            raise BundleError(f"a {self.runtime} generator runs one sequence at a time "
                              "(batch 1)")

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Append `ids [1, S]`; returns their logits [1, S, V]."""
        ids = np.asarray(ids)
        count = ids.shape[1]
        self.check_batch(ids.shape[0])
        if self.length + count > self.max_seq:
            raise BundleError(f"{self.length} tokens in the cache plus {count} new exceed the "
                              f"bundle's --max-seq {self.max_seq}; shorten the prompt or "
                              "recompile with a larger --max-seq")
        if count == 1:
            return self._run("decode", ids.astype(np.int32), 1)
        parts = []
        for start in range(0, count, self.prefill_len):
            chunk = ids[:, start:start + self.prefill_len].astype(np.int32)
            used = chunk.shape[1]
            if used < self.prefill_len:
                chunk = np.pad(chunk, ((0, 0), (0, self.prefill_len - used)))
            parts.append(self._run("prefill", chunk, used))
        return np.concatenate(parts, axis=1)

    def positions(self, tokens: np.ndarray, used: int) -> np.ndarray:
        """The cache rows of a call's tokens: the next `used` rows, then max_seq (pads)."""
        pos = np.full(tokens.shape[1], self.max_seq, np.int32)
        pos[:used] = np.arange(self.length, self.length + used, dtype=np.int32)
        return pos

    def _run(self, key: str, tokens: np.ndarray, used: int) -> np.ndarray:
        raise NotImplementedError
