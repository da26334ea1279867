"""Rows of the store's tables <-> the core's records: each task column named once.

`TASK_COLUMNS` names every column of `tasks` as the `Task` field it holds, with how its value is
stored; the store derives every statement from it, and the row <-> `Task` conversion here is
derived from it too, by name (a test checks both against the migrated schema and the model).
A new task field is one `Column` here and one migration.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec

from hakuriver.core.cores import CoreSet, format_core_ids, parse_core_ids
from hakuriver.core.model import Attempt, Node, Task
from hakuriver.core.states import NodeState, TaskState


def _same(value: Any) -> Any:
    return value


def _json_text(value: object) -> str:
    return msgspec.json.encode(value).decode()  # several times faster than json.dumps: a batch holds thousands


def _attempts_from_db(text: str) -> list[Attempt]:
    return [Attempt(**{**a, "state": TaskState(a["state"]), "core_ids": tuple(a["core_ids"])}) for a in json.loads(text)]


@dataclass(frozen=True)
class Column:
    name: str
    #: model value -> what SQLite stores, and back
    to_db: Callable[[Any], Any] = _same
    from_db: Callable[[Any], Any] = _same
    #: may change after submission (written by updates; the rest only by the insert)
    changes: bool = True


#: every column of `tasks`, named as the `Task` field it holds (a test checks both against the migrated schema)
TASK_COLUMNS: tuple[Column, ...] = (
    Column("task_id", changes=False),
    Column("batch_id", changes=False),
    Column("state", attrgetter("value"), TaskState),
    Column("command", changes=False),
    Column("args", _json_text, json.loads, changes=False),
    Column("env", _json_text, json.loads, changes=False),
    Column("cores", changes=False),
    Column("cwd", changes=False),
    Column("target_node", changes=False),
    Column("node"),
    Column("core_ids", format_core_ids, parse_core_ids),
    Column("exit_code"),
    Column("signal"),
    Column("error"),
    Column("submitted_at", changes=False),
    Column("started_at"),
    Column("finished_at"),
    Column("stdout_path"),
    Column("stderr_path"),
    Column("kill_requested", int, bool),
    Column("name", changes=False),
    Column("owner", changes=False),
    Column("cpu_user_seconds"),
    Column("cpu_system_seconds"),
    Column("max_rss_bytes"),
    Column("time_limit", changes=False),
    Column("retries", changes=False),
    Column("after", _json_text, json.loads, changes=False),
    Column("throttle", changes=False),
    Column("attempt"),
    Column("attempts", _json_text, _attempts_from_db),
    Column("unix_user"),
)
NODE_COLUMNS = ("name", "core_ids", "memory_bytes", "state", "last_heartbeat")
#: the columns an update writes (the rest only the insert)
CHANGING = [c for c in TASK_COLUMNS if c.changes]

_task_values = attrgetter(*(c.name for c in TASK_COLUMNS))
_change_values = attrgetter(*(c.name for c in CHANGING), "task_id")
_TO_DB = [(i, c.to_db) for i, c in enumerate(TASK_COLUMNS) if c.to_db is not _same]
_CHANGE_TO_DB = [(i, c.to_db) for i, c in enumerate(CHANGING) if c.to_db is not _same]
_FROM_DB = [(i, c.from_db) for i, c in enumerate(TASK_COLUMNS) if c.from_db is not _same]
_TASK_FIELDS = tuple(c.name for c in TASK_COLUMNS)


def _converted(values: tuple[Any, ...], converters: list[tuple[int, Callable[[Any], Any]]]) -> list[Any]:
    row = list(values)
    for i, convert in converters:
        row[i] = convert(row[i])
    return row


def task_row(t: Task) -> list[Any]:
    return _converted(_task_values(t), _TO_DB)


def change_row(t: Task) -> list[Any]:
    return _converted(_change_values(t), _CHANGE_TO_DB)


def task_from_row(r: tuple[Any, ...]) -> Task:
    return Task(**dict(zip(_TASK_FIELDS, _converted(r, _FROM_DB))))


def node_row(n: Node) -> list[Any]:
    """The node's values in NODE_COLUMNS order: its cores are stored as the IDs it has."""
    values = {"name": n.name, "core_ids": format_core_ids(n.cores.all), "memory_bytes": n.memory_bytes,
              "state": n.state.value, "last_heartbeat": n.last_heartbeat}
    return [values[c] for c in NODE_COLUMNS]


def node_from_row(r: tuple[Any, ...]) -> Node:
    row = dict(zip(NODE_COLUMNS, r))
    return Node(name=row["name"], cores=CoreSet(parse_core_ids(row["core_ids"])), memory_bytes=row["memory_bytes"],
                state=NodeState(row["state"]), last_heartbeat=row["last_heartbeat"])
