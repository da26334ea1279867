"""Work queued on a node ahead of its free cores: which tasks may wait there, and behind which cores.

A node never runs more tasks than it has cores, so with one report per finished core a runner
sends a message per task or two, and each message costs the host and the runner about the
same whatever it carries. A node whose keeper can hold a launch until its core frees
(`queues_ahead`) may therefore be given tasks to hold behind its busy cores: the keeper starts
each the moment its core frees, and a report carries tens of results. How many a core holds
follows how long the batch's tasks run: about QUEUED_WORK seconds of them (and a quarter of the
wait limit at most), at most DEPTH, and a node holds NODE_DEPTH at most, as its keeper starts
them one at a time. Tiny tasks get deep queues, so the node never runs dry while results and
new orders travel; tasks near SHORT get a few, so a node never holds much more work than another
could take over, and a queued task starts well within its wait limit.

Only tasks for which waiting cannot hurt are queued ahead: one core, any node, no throttle,
and a batch whose recent tasks were all short. A queued task that has not started within its
launch's wait limit is handed back unrun (`returned`) and goes back to the queue, and its
batch counts as long again until short tasks show otherwise.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping

from hakuriver.core.model import Node, Task

#: tasks queued behind each busy core, at most
DEPTH = 64
#: tasks queued on one node, at most (its keeper starts a few thousand a second, one at a time)
NODE_DEPTH = 256
#: seconds of a batch's work (as its recent tasks ran) queued behind each busy core
QUEUED_WORK = 0.5
#: a batch is short while each of its last SAMPLES finished tasks ran at most SHORT seconds
SHORT = 0.25
SAMPLES = 8
#: ... and at least MIN_DONE of its tasks have finished
MIN_DONE = 3
#: batches remembered (the most recently active)
REMEMBERED = 1024
#: seconds a task queued ahead waits for its core at most, before its node hands it back
LONGEST_WAIT = 5.0


def wait_limit(heartbeat_interval: float, timeout_factor: float) -> float:
    """How long a task queued ahead may wait on its node; 0 = queue nothing ahead.

    A task queued ahead must have started or been handed back before the host could declare its
    node silent (at interval x factor after the node's last heartbeat, which may be up to an
    interval older than the order): otherwise a node cut off from the host could start it after
    it was given to another node. One interval is left spare for the round trip.
    """
    return max(0.0, min(LONGEST_WAIT, heartbeat_interval * (timeout_factor - 2)))


class ShortBatches:
    """How long the recent tasks of each active batch ran."""

    def __init__(self) -> None:
        self._runs: OrderedDict[str, deque[float]] = OrderedDict()

    def ran(self, batch_id: str, seconds: float) -> None:
        runs = self._runs.get(batch_id)
        if runs is None:
            runs = self._runs[batch_id] = deque(maxlen=SAMPLES)
            if len(self._runs) > REMEMBERED:
                self._runs.popitem(last=False)
        else:
            self._runs.move_to_end(batch_id)
        runs.append(seconds)

    def returned(self, batch_id: str) -> None:
        """A task of the batch waited too long behind a busy core: the batch is not short for now."""
        self.ran(batch_id, float("inf"))

    def is_short(self, batch_id: str) -> bool:
        runs = self._runs.get(batch_id) if batch_id else None
        return runs is not None and len(runs) >= MIN_DONE and max(runs) <= SHORT

    def depth(self, batch_id: str, wait_limit: float) -> int:
        """How many of this batch's tasks one core may hold: about QUEUED_WORK seconds of them, and
        a quarter of the wait limit at most (0 if the batch is not short)."""
        if not self.is_short(batch_id):
            return 0
        longest = max(self._runs[batch_id])
        work = min(QUEUED_WORK, wait_limit / 4)
        return DEPTH if longest * DEPTH <= work else max(1, int(work / longest + 1e-9))


def may_wait(task: Task, batches: ShortBatches) -> bool:
    """Whether the task may be queued behind a busy core."""
    return (task.cores == 1 and not task.target_node and not task.throttle and bool(task.batch_id)
            and batches.is_short(task.batch_id))


def open_slots(nodes: Iterable[Node], tasks: Mapping[str, Task], batches: ShortBatches,
               depth: int) -> list[tuple[int, str, int]]:
    """(tasks queued, node, core) of every busy core with fewer than `depth` queued (the depth of
    the batch at the head of the queue), least queued first (a heap). Only behind cores whose
    every task is a one-core task of a short batch: behind a long task a queued one would wait out
    its limit while other cores idle. A node whose queues are full costs O(1)."""
    slots = []
    short: dict[str, bool] = {}  # batch -> is_short, for this call: a node's tasks are mostly of one batch
    for node in nodes:
        busy = len(node.cores.offered) - node.cores.free_count
        if node.queued.total >= min(depth * busy, NODE_DEPTH):
            continue
        long_cores = set()
        for task_id in node.task_ids:
            task = tasks[task_id]
            is_short = short.get(task.batch_id)
            if is_short is None:
                is_short = short[task.batch_id] = batches.is_short(task.batch_id)
            # (nor behind a task of several cores: only one-core tasks share a core, so each comes back alone)
            if task.cores > 1 or not is_short:
                long_cores.update(task.core_ids)
        slots += [(node.queued.behind(core), node.name, core)
                  for core in set(node.cores.offered).difference(node.cores.free_ids(), long_cores)
                  if node.queued.behind(core) < depth]
    heapq.heapify(slots)
    return slots
