"""Data-parallel analysis on `torch.distributed` (gloo, so CPU-only machines work) under
`torchrun`.

Every process loads the whole data set; `shard` gives batch i to rank i % world, so batch
boundaries are those of the single-process run and every per-batch quantity (taps, gradients,
the per-batch random generators) is the same. What crosses processes:

- sums over samples (task damage and its sample count, conductance gradients): `all_reduce_sum`;
- the shared methods' streaming accumulators: gathered with `all_gather_object` and merged in
  rank order (`merge_ranks`); lists of per-batch values (the k-NN mutual-information samples)
  are interleaved back into global batch order, so estimators that need every sample at once
  see exactly the single-process data;
- per-batch values needed whole (baseline outputs for the task metrics): `gather_batches`.

Reductions gather every rank's part and add them in rank order on each rank (instead of a ring
all-reduce), so all ranks end with bitwise-identical statistics and scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from layerwise.base.errors import LayerwiseError

_RANK = 0
_OWNED = False  # whether init_from_env created the process group (and so may destroy it)

TORCHRUN_HINT = ("run it under torchrun, e.g. `torchrun --nproc-per-node 2 -m layerwise "
                 "analyze SPEC --data D --out DIR --distributed`")


class DistributedError(LayerwiseError):
    """Distributed analysis asked for outside torchrun, or data that cannot be sharded."""


def _dist():
    import torch.distributed as dist

    return dist


def initialized() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def init_from_env() -> tuple[int, int]:
    """(rank, world size) of this process, joining the gloo process group that torchrun's
    environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) describes. A group that already
    exists is used as is; a world of one needs no group. Raises DistributedError outside
    torchrun."""
    global _RANK, _OWNED
    dist = _dist()
    if initialized():
        _RANK = dist.get_rank()
        return _RANK, dist.get_world_size()
    needed = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    missing = [k for k in needed if k not in os.environ]
    if missing:
        raise DistributedError(f"--distributed needs the process group torchrun sets up "
                               f"({', '.join(missing)} not set): {TORCHRUN_HINT}")
    if not dist.is_available() or not dist.is_gloo_available():
        raise DistributedError("--distributed needs torch.distributed with the gloo backend, "
                               "which this PyTorch build lacks")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _RANK = rank
    if world > 1:
        # torch.distributed.nn.functional binds `group=group.WORLD` as default arguments when
        # first imported, and torch.export imports it. Imported after the group exists, those
        # defaults keep the group alive past destroy_process_group, so its gloo worker threads
        # outlive it and one still releasing the last collective's tensors when the
        # interpreter shuts down aborts the process. Imported first, the defaults are None.
        import torch.distributed.nn.functional  # noqa: F401

        dist.init_process_group("gloo", rank=rank, world_size=world)
        _OWNED = True
    return rank, world


def finish() -> None:
    """Leave the process group if init_from_env created it (the rank stays known)."""
    global _OWNED
    if _OWNED and initialized():
        _dist().destroy_process_group()
    _OWNED = False


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return _dist().get_rank() if initialized() else _RANK


def is_main() -> bool:
    """True on rank 0 (and whenever the analysis is not distributed)."""
    return rank() == 0


def shard(batches: list, rank: int, world: int) -> list:
    """The batches of `rank`: batch i goes to rank i % world (boundaries kept)."""
    return [b for i, b in enumerate(batches) if i % world == rank]


def all_gather_object(obj: Any) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    dist = _dist()
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(*values):
    """Sum each value (float, int, numpy array or tensor) over the ranks; returns them in the
    same kinds (one value: that value). Sums are taken in float64, in rank order, on every
    rank, so every rank gets the same bits."""
    dist = _dist()
    flat = [torch.as_tensor(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v,
                                       dtype=np.float64)).reshape(-1) for v in values]
    sizes = [t.numel() for t in flat]
    packed = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64)
    parts = [torch.empty_like(packed) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, packed)
    total = parts[0].clone()
    for p in parts[1:]:
        total = total + p
    out, start = [], 0
    for v, n in zip(values, sizes):
        t = total[start:start + n]
        start += n
        if isinstance(v, torch.Tensor):
            out.append(t.reshape(v.shape).to(v.dtype))
        elif isinstance(v, np.ndarray):
            out.append(t.reshape(v.shape).numpy().astype(v.dtype))
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out.append(round(float(t[0])))
        else:
            out.append(float(t[0]))
    return out[0] if len(out) == 1 else tuple(out)


def interleave(parts: list[list]) -> list:
    """Per-rank lists of per-batch items (rank r holds batches r, r + world, ...) back in
    global batch order."""
    out = []
    for j in range(max((len(p) for p in parts), default=0)):
        out += [p[j] for p in parts if j < len(p)]
    return out


def merge_ranks(states: list) -> Any:
    """One state from every rank's state (same structure): dicts key by key, lists of per-batch
    values interleaved into batch order, accumulators folded with `.merge` in rank order."""
    first = states[0]
    if isinstance(first, dict):
        keys = list(first)
        for s in states[1:]:
            keys += [k for k in s if k not in keys]
        return {k: merge_ranks([s[k] for s in states if k in s]) for k in keys}
    if isinstance(first, list):
        return interleave(states)
    for s in states[1:]:
        first.merge(s)
    return first


@dataclass(frozen=True)
class Shard:
    """This process's share of the data: its rank, the world size, the global index of each of
    its batches and the size of every global batch."""

    rank: int
    world: int
    indices: tuple[int, ...]
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, sizes: list[int], rank: int, world: int) -> Shard:
        if len(sizes) < world:
            raise DistributedError(
                f"distributed analysis over {world} processes needs at least {world} batches; "
                f"the data gives {len(sizes)} (lower --batch-size or run fewer processes)")
        return cls(rank, world, tuple(range(rank, len(sizes), world)), tuple(sizes))

    def all_reduce_sum(self, *values):
        return all_reduce_sum(*values)

    def merge_states(self, states: dict) -> dict:
        """The shared methods' states merged over every rank (identical on every rank)."""
        return merge_ranks(all_gather_object(states))

    def gather_batches(self, items: list) -> list:
        """Per-local-batch items from every rank, in global batch order."""
        return interleave(all_gather_object(items))

    def cutoff(self, limit: int | None) -> int:
        """How many leading global batches a pass over the first `limit` samples reads
        (whole batches, stopping once `limit` samples are reached)."""
        if limit is None:
            return len(self.sizes)
        seen = 0
        for i, n in enumerate(self.sizes):
            seen += n
            if seen >= limit:
                return i + 1
        return len(self.sizes)
