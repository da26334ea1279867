"""One scenario per line: nodes as {name: (free, total)}, the queue as core counts (or (cores, node))."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hakuriver.core.scheduler import Capacity, Placement, Request, plan


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


# ---- the plan, against the plain scan it replaced (every node looked at for every request) ----
def reference_plan(queue, nodes, running=None):
    running = dict(running or {})
    free = {n.name: n.free for n in nodes}
    total = {n.name: n.total for n in nodes}
    reserved = None

    def largest():
        return max((f for name, f in free.items() if name != reserved), default=0)

    def best_fit(req):
        if req.target_node:
            ok = req.target_node != reserved and free.get(req.target_node, 0) >= req.cores
            return req.target_node if ok else None
        fits = [(f, name) for name, f in free.items() if name != reserved and f >= req.cores]
        return min(fits)[1] if fits else None

    placements = []
    for req in queue:
        if largest() == 0:
            break
        if req.throttle and running.get(req.batch_id, 0) >= req.throttle:
            continue
        node = best_fit(req) if req.cores <= largest() else None
        if node is not None:
            placements.append(Placement(req.task_id, node))
            free[node] -= req.cores
            if req.throttle:
                running[req.batch_id] = running.get(req.batch_id, 0) + 1
        elif reserved is None:
            if req.target_node:
                reserved = req.target_node if req.target_node in free else None
            else:
                candidates = [name for name in free if total[name] >= req.cores]
                reserved = max(candidates, key=lambda name: (free[name], name)) if candidates else None
            if reserved is not None and req.throttle:
                running[req.batch_id] = running.get(req.batch_id, 0) + 1
    return placements


node_caps = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=7).map(
    lambda pairs: [Capacity(f"n{i}", min(a, b), max(a, b)) for i, (a, b) in enumerate(pairs)])
requests = st.lists(st.tuples(st.integers(1, 7), st.sampled_from(["", "n0", "n3", "gone"]),
                              st.sampled_from(["", "b1", "b2"]), st.integers(0, 3)), max_size=25).map(
    lambda items: [Request(f"t{i}", c, node, batch, throttle if batch else 0)
                   for i, (c, node, batch, throttle) in enumerate(items)])


@settings(max_examples=2000, deadline=None)
@given(node_caps, requests, st.dictionaries(st.sampled_from(["b1", "b2"]), st.integers(0, 3)))
def test_the_plan_is_the_plain_scans_plan(nodes, queue, running):
    assert plan(queue, nodes, running) == reference_plan(queue, nodes, running)
