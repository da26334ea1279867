"""Why a pending task waits, in one line: what `--status` shows and the API's `pending_reason`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hakuriver.core.states import NodeState, TaskState

if TYPE_CHECKING:
    from hakuriver.core.cluster import Cluster


def why_pending(c: Cluster, task_id: str) -> str:
    """One line on what a pending task waits for."""
    task = c.tasks.get(task_id)
    if task is None or task.state is not TaskState.PENDING:
        return ""
    if task_id in c.deps:
        dep, count = c.deps.first_unmet(task_id)
        more = f" (and {count - 1} more)" if count > 1 else ""
        return f"waiting for dependency {dep} to complete{more}"
    if c.queue.is_parked(task_id) or (task.throttle and c.batch_running.get(task.batch_id, 0) >= task.throttle):
        return f"throttled: its batch already runs {task.throttle} tasks, the most its --array %{task.throttle} allows"
    online = [n for n in c.nodes.values() if n.state is NodeState.ONLINE and not n.leaving
              and (not task.target_node or n.name == task.target_node)]
    if task.target_node and not online:
        node = c.nodes.get(task.target_node)
        if node is not None and node.state is NodeState.ONLINE:
            return f"the runner of node {task.target_node} stopped; it runs once a runner is back there"
        return f"node {task.target_node} is offline"
    if not online:
        return "no node is online"
    best = max(online, key=lambda n: (n.free_cores, n.name))
    if task.cores > best.free_cores:
        cores = f"{task.cores} core" + ("s" if task.cores != 1 else "")
        return f"needs {cores}; the largest free block is {best.free_cores} (on {best.name})"
    return "queued behind earlier tasks; it runs as soon as the scheduler's next pass reaches it"
