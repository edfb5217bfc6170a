"""The values of structured pruning's group search (see prune_groups): a segment (where a
group's units sit along one axis of a tensor), the actions that slice a weight, and a group."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class Segment:
    """Where one group's units lie along one axis of a tensor (see the module docstring)."""

    group: Group
    axis: int
    outer: int
    period: int
    start: int
    inner: int

    def positions(self, units: list[int] | range, size: int) -> list[int]:
        """Positions on the axis (of total `size`) taken by the given units."""
        outer = size // self.period
        return [o * self.period + self.start + u * self.inner + i
                for o in range(outer) for u in units for i in range(self.inner)]


@dataclass(eq=False)
class Action:
    """A weight (get_attr target) sliced along `axis` where segment `seg` says."""

    target: str
    axis: int
    seg: Segment
    role: str  # producer | consumer | norm | const


@dataclass(eq=False)
class Group:
    id: int
    units: int
    producers: list[str] = field(default_factory=list)  # node names
    segs: list[Segment] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    consumed: list[tuple[str, Segment]] = field(default_factory=list)  # (node, seg) read by a
    dead: str | None = None  # reason the group cannot be pruned
    heads: bool = False  # coupled through an attention batch axis
    approx: bool = False  # a layer norm over the channels: pruning changes its statistics
    groups_args: list[tuple[str, Segment, int]] = field(default_factory=list)  # grouped conv

    def kill(self, why: str) -> None:
        if self.dead is None:
            self.dead = why

    def coarsen(self, f: int) -> bool:
        """Make each unit `f` old units; False when the unit count does not allow it."""
        if f == 1:
            return True
        if self.units % f:
            self.kill(f"cannot group {self.units} units by {f}")
            return False
        self.units //= f
        for s in self.segs:
            s.inner *= f
        return True

    def unit_channels(self) -> int:
        """Channels of the first producer per unit (a head's width, 1 for plain channels)."""
        return self.segs[0].inner if self.segs else 1
