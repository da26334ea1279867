"""One scenario per line: nodes as {name: (free, total)}, the queue as core counts (or (cores, node))."""

from __future__ import annotations

import pytest

from hakuriver.core.scheduler import Capacity, Request, plan


def run(nodes: dict[str, tuple[int, int]], queue: list) -> dict[str, str]:
    requests = []
    for i, item in enumerate(queue):
        cores, node = item if isinstance(item, tuple) else (item, "")
        requests.append(Request(f"t{i}", cores, node))
    caps = [Capacity(name, free, total) for name, (free, total) in nodes.items()]
    return {p.task_id: p.node for p in plan(requests, caps)}


@pytest.mark.parametrize(
    "nodes, queue, expected",
    [
        # first come first served while everything fits
        ({"a": (8, 8)}, [3, 3, 2], {"t0": "a", "t1": "a", "t2": "a"}),
        # best fit: the node with the fewest free cores that still fit
        ({"a": (8, 8), "b": (2, 4)}, [2], {"t0": "b"}),
        ({"a": (8, 8), "b": (2, 4)}, [3], {"t0": "a"}),
        # ties broken by name, so plans are stable
        ({"b": (4, 4), "a": (4, 4)}, [1], {"t0": "a"}),
        # backfill: the head (4) cannot fit anywhere now; a small task behind it may use b
        ({"a": (2, 8), "b": (1, 1)}, [4, 1], {"t1": "b"}),
        # ... but never the node reserved for the head (a: where 4 fits soonest)
        ({"a": (2, 8), "b": (0, 1)}, [4, 1, 1], {}),
        # the reservation goes to the node with the most free cores among those big enough
        ({"a": (1, 8), "b": (3, 8), "c": (2, 2)}, [4, 2, 1], {"t1": "c", "t2": "a"}),
        # a named node is the only candidate
        ({"a": (4, 4), "b": (4, 4)}, [(2, "b")], {"t0": "b"}),
        ({"a": (4, 4), "b": (1, 4)}, [(2, "b"), 1], {"t1": "a"}),
        # nothing free: nothing placed
        ({"a": (0, 4)}, [1, 1], {}),
        # no node at all
        ({}, [1], {}),
    ],
)
def test_plan(nodes, queue, expected):
    assert run(nodes, queue) == expected


def test_head_is_never_starved_by_a_stream_of_small_tasks():
    # a has 3 of 4 cores busy; the head needs 4; a steady stream of 1-core tasks follows
    placed = run({"a": (1, 4)}, [4] + [1] * 50)
    assert placed == {}  # a's free core waits for the head instead of going to the stream


def test_plan_does_not_touch_its_inputs():
    caps = [Capacity("a", 2, 2)]
    reqs = [Request("t0", 1), Request("t1", 1)]
    plan(reqs, caps)
    assert caps == [Capacity("a", 2, 2)] and reqs == [Request("t0", 1), Request("t1", 1)]


def test_large_queue_stops_scanning_once_nodes_are_full():
    # 100,000 queued 1-core tasks on a 2-core cluster: exactly two placements
    placed = run({"a": (2, 2)}, [1] * 100_000)
    assert placed == {"t0": "a", "t1": "a"}
