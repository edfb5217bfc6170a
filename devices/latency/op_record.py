"""One op as the latency model costs it, and the op-name helper the graph walkers share
(graph_ops builds the records; reorders adds the layout reorders onnxruntime inserts)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OpRecord:
    """One node as a runtime sees it. `fused` ops cost their FLOPs inside their producer;
    kind "view" costs a launch only; free ops have no record."""

    name: str
    op: str
    kind: str
    flops: float
    bytes: float  # activations in + out (after resolving views) + weights read
    weight_bytes: float
    layer: str  # row of the breakdown (block or depth-1 layer), '' when outside any layer
    fused: bool = False
    outputs: float = 0.0  # elements a conv or matmul writes (its epilogue: bias, activation)
    rows: float = 0.0  # rows a layer / RMS norm normalizes (each costs ROW_FLOPS)


def op_name(target) -> str:
    """'convolution' for aten.convolution.default, 'getitem' for operator.getitem."""
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(target, "__name__", str(target)).split(".")[-1]
