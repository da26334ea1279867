"""The cluster's bookkeeping checked whole: what every unit test and the state machine assert after each step."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from hakuriver.core.ahead import DEPTH, NODE_DEPTH
from hakuriver.core.states import TaskState

if TYPE_CHECKING:
    from hakuriver.core.cluster import Cluster


def check_invariants(c: Cluster) -> None:
    """Disjoint core sets (but for tasks queued ahead, counted), free + used = total, every holding task on its node, every
    pending task either queued or waiting on a dependency that can still complete, and
    the throttles' counts true."""
    running: dict[str, int] = {}
    for node in c.nodes.values():
        users: Counter[int] = Counter()
        for task_id in node.task_ids:
            task = c.tasks[task_id]
            assert task.state.holds_cores, f"{task_id} is {task.state.value} on {node.name}"
            assert task.node == node.name, f"{task_id} is on {task.node}, listed on {node.name}"
            users.update(task.core_ids)
            if task.throttle:
                running[task.batch_id] = running.get(task.batch_id, 0) + 1
        # a core is shared only by the tasks queued ahead behind the one using it (core/ahead.py)
        shared = {core: n - 1 for core, n in users.items() if n > 1}
        queued = node.queued.as_dict()
        assert shared == queued, f"cores shared {shared}, but {queued} queued ahead on {node.name}"
        assert node.queued.total == sum(queued.values()), f"queued-ahead total broken on {node.name}"
        assert all(n <= DEPTH for n in shared.values()), f"a core's queue on {node.name} is past its bound"
        assert node.queued.total <= NODE_DEPTH, f"{node.name} holds {node.queued.total} tasks queued ahead"
        used = set(users)
        assert len(used) + node.free_cores == node.total_cores, f"core count broken on {node.name}"
        assert not used & set(node.cores.free_ids()), f"taken cores listed free on {node.name}"
    assert running == c.batch_running, f"throttle counts {c.batch_running} but {running} hold cores"
    for task in c.tasks.values():
        if task.state.holds_cores:
            assert task.task_id in c.nodes[task.node].task_ids, f"{task.task_id} not on its node"
        places = (task.task_id in c.queue) + (task.task_id in c.deps) + c.queue.is_parked(task.task_id)
        assert places == (task.state is TaskState.PENDING), f"queue broken: {task.task_id} in {places} places"
        if c.queue.is_parked(task.task_id):  # held back only while its throttle has no place
            running = c.batch_running.get(task.batch_id, 0)
            assert c.queue.queued_in(task.batch_id) + running >= task.throttle, f"{task.task_id} parked needlessly"
    for task_id, deps in c.deps.waiting.items():
        for dep in deps:
            live = c.tasks.get(dep)
            assert (live is not None and live.state is not TaskState.LOST) or c.batches.active(dep), (
                f"{task_id} waits on {dep}, which has already ended")
    assert set(c.batches.problems) <= set(c.batches.left), "a batch's problem kept after it ended"
