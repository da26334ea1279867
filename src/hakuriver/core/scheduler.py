"""Placement policy: first come first served, backfill that cannot starve the head, best fit.

`plan` is a pure function: it reads a snapshot of the queue and of the online nodes' free core
counts and returns where tasks should go. It never mutates its inputs or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
    start. Cost: O(queue) plus O(nodes) per placement.
    """
    running = dict(running or {})
    free = {n.name: n.free for n in nodes}
    total = {n.name: n.total for n in nodes}
    reserved: str | None = None
    largest_free = _largest_free(free, reserved)
    placements: list[Placement] = []
    for req in queue:
        if largest_free == 0:
            break
        if req.throttle and running.get(req.batch_id, 0) >= req.throttle:
            continue
        node = _best_fit(req, free, reserved) if req.cores <= largest_free else None
        if node is not None:
            placements.append(Placement(req.task_id, node))
            free[node] -= req.cores
            largest_free = _largest_free(free, reserved)
            if req.throttle:
                running[req.batch_id] = running.get(req.batch_id, 0) + 1
        elif reserved is None:
            reserved = _reservation(req, free, total)
            if reserved is not None:
                largest_free = _largest_free(free, reserved)
                if req.throttle:
                    running[req.batch_id] = running.get(req.batch_id, 0) + 1
    return placements


def _largest_free(free: dict[str, int], reserved: str | None) -> int:
    return max((f for name, f in free.items() if name != reserved), default=0)


def _best_fit(req: Request, free: dict[str, int], reserved: str | None) -> str | None:
    """The node with the fewest free cores that still fit (ties: by name, for stable plans)."""
    if req.target_node:
        ok = req.target_node != reserved and free.get(req.target_node, 0) >= req.cores
        return req.target_node if ok else None
    best: str | None = None
    for name, f in free.items():
        if name == reserved or f < req.cores:
            continue
        if best is None or (f, name) < (free[best], best):
            best = name
    return best


def _reservation(req: Request, free: dict[str, int], total: dict[str, int]) -> str | None:
    if req.target_node:
        return req.target_node if req.target_node in free else None
    candidates = [name for name in free if total[name] >= req.cores]
    if not candidates:
        return None
    return max(candidates, key=lambda name: (free[name], name))
