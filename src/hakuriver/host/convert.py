"""Protocol messages <-> core records: the one place where the two shapes meet.

Fields are copied by name, so a field added to both sides with the same name flows through
without an edit here; only the few that differ in shape (an enum, a tuple) or in name (a
spec's `node` is the task's `target_node`) are spelled out.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from hakuriver import protocol as p
from hakuriver.core.attempts import earlier_output
from hakuriver.core.cluster import Finished, NodeReport, Orders, Started
from hakuriver.core.model import Attempt, Node, Task
from hakuriver.core.states import NodeState

#: TaskSpec field -> Task field, where the names differ
_SPEC_TO_TASK = {"node": "target_node"}


def _reader(fields: tuple[str, ...], keys: tuple[str, ...] | None = None) -> Callable[[Any], dict[str, Any]]:
    """obj -> {key: value of field}, the values read in one C call (the hot paths' conversions)."""
    get, keys = attrgetter(*fields), keys or fields
    assert len(fields) > 1  # (attrgetter of one name gives a bare value, not a tuple)
    return lambda obj: dict(zip(keys, get(obj)))


_spec_as_task = _reader(p.TaskSpec._fields, tuple(_SPEC_TO_TASK.get(f, f) for f in p.TaskSpec._fields))


def tasks_from_specs(specs: list[p.TaskSpec], now: float, batch_id: str, owner: str) -> list[Task]:
    """New tasks, one per spec, each with a new ID.

    Equal strings of one submission become one object: each spec was decoded on its own, so the
    tasks of an array held a copy each of the same command, folder and arguments (a seventh of
    a queued task's memory). (msgspec already shares the names of their variables.)"""
    once: dict[str, str] = {}
    return [task_from_spec(spec, task_id, now, batch_id, owner, once)
            for spec, task_id in zip(specs, new_ids(len(specs)))]


def task_from_spec(spec: p.TaskSpec, task_id: str, now: float, batch_id: str, owner: str,
                   once: dict[str, str]) -> Task:
    """A new task from its spec; its command, folder and arguments are the strings in `once`
    where equal ones are there already (and are added to it)."""
    share = once.setdefault
    values = _spec_as_task(spec)
    values["command"], values["cwd"] = share(spec.command, spec.command), share(spec.cwd, spec.cwd)
    values["args"] = [share(a, a) for a in spec.args] if spec.args else []
    values["env"], values["after"] = dict(spec.env), list(spec.after)
    return Task(task_id=task_id, submitted_at=now, batch_id=batch_id, owner=owner, **values)


def new_ids(n: int) -> list[str]:
    """`n` random (version 4) UUIDs, as `str(uuid.uuid4())` writes them, from one read of the OS's
    random source: four times faster than uuid4 each, which was a sixth of a big submission's cost."""
    raw = bytearray(os.urandom(16 * n))
    ids = []
    for i in range(0, 16 * n, 16):
        raw[i + 6] = raw[i + 6] & 0x0F | 0x40  # version 4
        raw[i + 8] = raw[i + 8] & 0x3F | 0x80  # the RFC 4122 variant
        h = raw[i:i + 16].hex()
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


def spec_of(t: Task) -> p.TaskSpec:
    """The spec that submits this task again (--retry-failed): everything the user gave but --after,
    which the first run has already waited for."""
    values = {f: _view_value(getattr(t, _SPEC_TO_TASK.get(f, f))) for f in p.TaskSpec._fields}
    values["after"] = []
    return p.TaskSpec(**values)


def _view_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, list) and value and isinstance(value[0], Attempt):
        return [attempt_view(a) for a in value]
    return getattr(value, "value", value)  # enums travel as their names


def attempt_view(a: Attempt) -> p.AttemptView:
    return p.AttemptView(**{f.name: _view_value(getattr(a, f.name)) for f in dataclasses.fields(a)})


def task_view(t: Task, pending_reason: str = "") -> p.TaskView:
    """The task as the API shows it: its earlier attempts, then the current one."""
    values = {f: _view_value(getattr(t, f)) for f in p.TaskView._fields if f not in ("attempts", "pending_reason")}
    current = p.AttemptView(**{f: values[f] for f in p.AttemptView._fields if f in values and f != "attempt"},
                            attempt=t.attempt)
    return p.TaskView(**values, attempts=[*_view_value(t.attempts), current], pending_reason=pending_reason)


def node_view(n: Node) -> p.NodeView:
    return p.NodeView(
        name=n.name, state=n.state.value, total_cores=n.total_cores, free_cores=n.free_cores,
        running_tasks=n.running_tasks, memory_bytes=n.memory_bytes, last_heartbeat=n.last_heartbeat,
        leaving=n.leaving and n.state is NodeState.ONLINE,
    )


def node_report(hb: p.Heartbeat) -> NodeReport:
    n = hb.node
    return NodeReport(name=n.name, core_ids=tuple(n.core_ids), memory_bytes=n.memory_bytes, queues_ahead=n.queues_ahead,
                      runner_id=n.runner_id, leaving=hb.leaving)


_started_fields = _reader(p.TaskStarted._fields)
_finished_fields = _reader(p.TaskFinished._fields)


def started_event(s: p.TaskStarted) -> Started:
    return Started(**_started_fields(s))


def finished_event(f: p.TaskFinished) -> Finished:
    return Finished(**_finished_fields(f))


def orders_message(orders: Orders) -> p.Orders:
    return p.Orders(launch=[launch_order(t, orders.wait_limit) for t in orders.launch], kill=orders.kill)


#: the launch's fields that are the task's own (the rest: earlier_output and wait_limit)
_LAUNCH_FROM_TASK = tuple(f for f in p.LaunchOrder._fields if f not in ("earlier_output", "wait_limit"))
_launch_values = attrgetter(*_LAUNCH_FROM_TASK)


def launch_order(t: Task, wait_limit: float | None = None) -> p.LaunchOrder:
    values = dict(zip(_LAUNCH_FROM_TASK, map(_view_value, _launch_values(t))))
    values["earlier_output"] = earlier_output(t) if t.attempts else 0
    values["wait_limit"] = wait_limit
    return p.LaunchOrder.of(values)

