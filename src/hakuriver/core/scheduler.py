"""Placement policy: first come first served, backfill that cannot starve the head, best fit.

`plan` is a pure function: it reads a snapshot of the queue and of the online nodes' free core
counts and returns where tasks should go. It never mutates its inputs or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from bisect import bisect_left, insort
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    task_id: str
    cores: int
    #: the node the user named; empty = any node
    target_node: str = ""
    #: its batch, and how many of the batch's tasks may run at once (0 = any number)
    batch_id: str = ""
    throttle: int = 0


@dataclass(frozen=True)
class Capacity:
    name: str
    free: int
    total: int


@dataclass(frozen=True)
class Placement:
    task_id: str
    node: str


def plan(queue: Iterable[Request], nodes: Sequence[Capacity], running: Mapping[str, int] | None = None) -> list[Placement]:
    """Place queued requests, in order, on online nodes.

    The first request that cannot be placed reserves the node where it will fit soonest (the
    one with the most free cores among those large enough). Later, smaller requests may
    backfill every other node, but never the reserved one: its cores only free up from then on,
    so the head of the queue cannot starve. A request whose batch already runs its throttle's
    worth of tasks (`running`: holding cores, by batch) is passed over and reserves nothing; the
    request that reserves a node also reserves its place in its batch's throttle, or a later task
    of its batch could take the last place and leave the node reserved for a request that cannot
    start. Cost: O(queue) plus O(log nodes) per placement (nodes are kept by free core count),
    plus O(nodes) once for a reservation.
    """
    running = dict(running or {})
    free = _FreeCores(nodes)
    total = {n.name: n.total for n in nodes}
    reserved: str | None = None
    largest_free = free.largest(reserved)
    placements: list[Placement] = []
    for req in queue:
        if largest_free == 0:
            break
        if req.throttle and running.get(req.batch_id, 0) >= req.throttle:
            continue
        node = free.best_fit(req, reserved) if req.cores <= largest_free else None
        if node is not None:
            placements.append(Placement(req.task_id, node))
            free.take(node, req.cores)
            largest_free = free.largest(reserved)
            if req.throttle:
                running[req.batch_id] = running.get(req.batch_id, 0) + 1
        elif reserved is None:
            reserved = _reservation(req, free.of, total)
            if reserved is not None:
                largest_free = free.largest(reserved)
                if req.throttle:
                    running[req.batch_id] = running.get(req.batch_id, 0) + 1
    return placements


class _FreeCores:
    """The nodes' free core counts, and the nodes grouped by that count (names sorted in each
    group, the counts that have nodes sorted too): the best fit and the largest free count are
    found without scanning every node, which at 1,000 nodes was most of a placement's cost."""

    def __init__(self, nodes: Sequence[Capacity]) -> None:
        self.of = {n.name: n.free for n in nodes}
        self._names: dict[int, list[str]] = {}
        for n in sorted(nodes, key=lambda n: n.name):
            self._names.setdefault(n.free, []).append(n.name)
        self._counts = sorted(c for c in self._names if c > 0)

    def take(self, node: str, cores: int) -> None:
        before = self.of[node]
        self.of[node] = before - cores
        names = self._names[before]
        del names[bisect_left(names, node)]
        if not names:
            del self._names[before]
            if before > 0:
                del self._counts[bisect_left(self._counts, before)]
        after = before - cores
        if after not in self._names:
            self._names[after] = []
            if after > 0:
                insort(self._counts, after)
        insort(self._names[after], node)

    def largest(self, reserved: str | None) -> int:
        """The most free cores on a node other than the reserved one (0 if none)."""
        for count in reversed(self._counts):
            if self._names[count] != [reserved]:
                return count
        return 0

    def best_fit(self, req: Request, reserved: str | None) -> str | None:
        """The node with the fewest free cores that still fit (ties: by name, for stable plans)."""
        if req.target_node:
            ok = req.target_node != reserved and self.of.get(req.target_node, 0) >= req.cores
            return req.target_node if ok else None
        for i in range(bisect_left(self._counts, req.cores), len(self._counts)):
            for name in self._names[self._counts[i]][:2]:  # the reserved node is at most one of them
                if name != reserved:
                    return name
        return None


def _reservation(req: Request, free: dict[str, int], total: dict[str, int]) -> str | None:
    if req.target_node:
        return req.target_node if req.target_node in free else None
    candidates = [name for name in free if total[name] >= req.cores]
    if not candidates:
        return None
    return max(candidates, key=lambda name: (free[name], name))
